"""The one signing helper for node requests, used by senders and by the API that checks.

Standard library only: it is imported by the worker's runner, by the Ansible module in
``library/`` (through ``module_utils/zonefarm_signing.py``, a symlink to this file) and
by the API.

Signed string: ``"<timestamp>\\n<nonce>\\n<METHOD>\\n<path with query>\\n<hex sha256 of body>"``,
keyed with the nodes secret, HMAC-SHA256, hex.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER_NODE = "X-Zonefarm-Node"
HEADER_TIMESTAMP = "X-Zonefarm-Timestamp"
HEADER_NONCE = "X-Zonefarm-Nonce"
HEADER_SIGNATURE = "X-Zonefarm-Signature"


def string_to_sign(timestamp: str, nonce: str, method: str, path: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body or b"").hexdigest()
    return f"{timestamp}\n{nonce}\n{method.upper()}\n{path}\n{digest}".encode()


def signature(secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    return hmac.new(secret.encode(), string_to_sign(timestamp, nonce, method, path, body),
                    hashlib.sha256).hexdigest()


def sign_headers(secret: str, node: str, method: str, path: str, body: bytes = b"",
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """Headers for one request. ``path`` includes the query string, as sent."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        HEADER_NODE: node,
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(secret, ts, nonce, method, path, body),
    }


def verify(secret: str, headers: dict[str, str], method: str, path: str, body: bytes,
           max_skew: int = 300, now: float | None = None) -> str:
    """Check a signed request; return the node name, or raise ValueError saying why.

    Replay protection (the nonce seen before) is the caller's job: it needs storage.
    """
    node = headers.get(HEADER_NODE, "")
    ts = headers.get(HEADER_TIMESTAMP, "")
    nonce = headers.get(HEADER_NONCE, "")
    sig = headers.get(HEADER_SIGNATURE, "")
    if not (node and ts and nonce and sig):
        raise ValueError("missing signature headers")
    try:
        ts_value = int(ts)
    except ValueError:
        raise ValueError("malformed timestamp") from None
    current = time.time() if now is None else now
    if abs(current - ts_value) > max_skew:
        raise ValueError("timestamp outside the allowed window")
    if not 8 <= len(nonce) <= 128:
        raise ValueError("malformed nonce")
    expected = signature(secret, ts, nonce, method, path, body)
    if not hmac.compare_digest(expected, sig.lower()):
        raise ValueError("bad signature")
    return node

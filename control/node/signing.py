"""The one signing helper for node requests, used by senders and by the API that checks.

Standard library only: it is imported by the worker's API client (``control.node.client``,
which the runner and the node agent use), by the Ansible module in ``library/`` (through
``module_utils/zonefarm_signing.py``, a symlink to this file) and by the API. A module in
``library/`` may run under an interpreter without ``requests``, so the whole request is
built here (``signed_request``) and each sender only moves the bytes.

Signed string: ``"<timestamp>\\n<nonce>\\n<METHOD>\\n<path with query>\\n<hex sha256 of body>"``,
keyed with the nodes secret, HMAC-SHA256, hex.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import NamedTuple
from urllib.parse import urlencode, urlsplit

HEADER_NODE = "X-Zonefarm-Node"
HEADER_TIMESTAMP = "X-Zonefarm-Timestamp"
HEADER_NONCE = "X-Zonefarm-Nonce"
HEADER_SIGNATURE = "X-Zonefarm-Signature"
API_PREFIX = "/api/v1"


class SignedRequest(NamedTuple):
    url: str  # what to connect to and send
    path: str  # the path with its query, as signed and as the API sees it
    body: bytes
    headers: dict[str, str]


def request_target(api_url: str, route: str, query: dict[str, object] | None = None) -> tuple[str, str]:
    """``(url, path with query)`` of ``route`` (``/tasks/7/callback``) under the API's base URL.

    ``api_url`` is the zone's base URL, with or without a path prefix (a reverse proxy's) and
    with or without ``/api/v1``; the path returned is the one the API sees and signs.
    """
    parts = urlsplit(api_url.rstrip("/"))
    base = parts.path.rstrip("/")
    if base.endswith(API_PREFIX):
        base = base[: -len(API_PREFIX)]
    path = f"{base}{API_PREFIX}{route}"
    if query:
        path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
    return f"{parts.scheme}://{parts.netloc}{path}", path


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


def signed_request(secret: str, node: str, method: str, api_url: str, route: str, body: bytes = b"",
                   query: dict[str, object] | None = None) -> SignedRequest:
    """Everything a sender needs for one signed request: URL, signed path, body, headers.

    Called once per attempt: a retried request gets a fresh timestamp and nonce, so a
    retry is never refused as a replay.
    """
    url, path = request_target(api_url, route, query)
    headers = sign_headers(secret, node, method, path, body)
    headers["Content-Type"] = "application/json"
    return SignedRequest(url, path, body, headers)


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

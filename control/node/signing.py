"""The one signing helper for node requests, used by senders and by the API that checks.

Standard library only: it is imported by the worker's API client (``control.node.client``,
which the runner and the node agent use), by the Ansible module in ``library/`` (through
``module_utils/zonefarm_signing.py``, a symlink to this file) and by the API. A module in
``library/`` may run under an interpreter without ``requests``, so the whole request is
built here (``signed_request``) and each sender only moves the bytes.

Signed string: ``"<timestamp>\\n<nonce>\\n<node>\\n<key generation>\\n<METHOD>\\n<path with query>\\n<hex
sha256 of body>"``, HMAC-SHA256 (hex) keyed with the node's own key,
``derive_node_key(nodes_secret, node, generation)``: the node's name is inside what is signed
and inside the key, so one node's key cannot sign as another (docs/security.md, Identities).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import NamedTuple
from urllib.parse import urlencode, urlsplit

HEADER_NODE = "X-Zonefarm-Node"
HEADER_GENERATION = "X-Zonefarm-Key-Generation"
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


def derive_key(secret: str, kind: str, name: str, generation: int = 0) -> str:
    """A key of its own for one holder: ``HMAC-SHA256(secret, "<kind>:<name>:<generation>")``, hex.

    The one derivation of per-holder keys (nodes, webhooks): the kind keeps the key spaces
    apart (node ``7`` and webhook ``7`` get different keys from one secret), and a new
    generation makes the old key useless without any key table to keep.
    """
    if generation < 0:
        raise ValueError("key generation must be 0 or more")
    return hmac.new(secret.encode(), f"{kind}:{name}:{generation}".encode(), hashlib.sha256).hexdigest()


def derive_node_key(nodes_secret: str, node: str, generation: int = 0) -> str:
    """The key of one node: ``HMAC-SHA256(nodes_secret, "node:<name>:<generation>")``, hex.

    Only the zone and the Ansible controller hold the nodes secret; a node holds its own
    key, which signs as that node only (the name is part of the key and of what is
    signed), and a new generation (rotation, or deregistration) makes the old key useless.
    """
    return derive_key(nodes_secret, "node", node, generation)


def string_to_sign(timestamp: str, nonce: str, node: str, generation: int, method: str, path: str,
                   body: bytes) -> bytes:
    digest = hashlib.sha256(body or b"").hexdigest()
    return f"{timestamp}\n{nonce}\n{node}\n{generation}\n{method.upper()}\n{path}\n{digest}".encode()


def signature(key: str, timestamp: str, nonce: str, node: str, generation: int, method: str, path: str,
              body: bytes) -> str:
    return hmac.new(key.encode(), string_to_sign(timestamp, nonce, node, generation, method, path, body),
                    hashlib.sha256).hexdigest()


def sign_headers(key: str, node: str, method: str, path: str, body: bytes = b"", generation: int = 0,
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """Headers for one request signed with the node's key. ``path`` includes the query string, as sent."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        HEADER_NODE: node,
        HEADER_GENERATION: str(generation),
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(key, ts, nonce, node, generation, method, path, body),
    }


def signed_request(key: str, node: str, method: str, api_url: str, route: str, body: bytes = b"",
                   query: dict[str, object] | None = None, generation: int = 0) -> SignedRequest:
    """Everything a sender needs for one signed request: URL, signed path, body, headers.

    Called once per attempt: a retried request gets a fresh timestamp and nonce, so a
    retry is never refused as a replay.
    """
    url, path = request_target(api_url, route, query)
    headers = sign_headers(key, node, method, path, body, generation)
    headers["Content-Type"] = "application/json"
    return SignedRequest(url, path, body, headers)


class Claim(NamedTuple):
    """What a signed request says about itself, before its signature is checked."""

    node: str
    generation: int
    timestamp: str
    nonce: str
    signature: str


def claim(headers: dict[str, str], max_skew: int = 300, now: float | None = None) -> Claim:
    """Read and sanity-check the signature headers (not the signature); ValueError says why.

    The verifier needs the node name and key generation first, to know which key to check
    the signature with.
    """
    node = headers.get(HEADER_NODE, "")
    gen = headers.get(HEADER_GENERATION, "")
    ts = headers.get(HEADER_TIMESTAMP, "")
    nonce = headers.get(HEADER_NONCE, "")
    sig = headers.get(HEADER_SIGNATURE, "")
    if not (node and gen and ts and nonce and sig):
        raise ValueError("missing signature headers")
    if not gen.isdigit() or len(gen) > 9:
        raise ValueError("malformed key generation")
    try:
        ts_value = int(ts)
    except ValueError:
        raise ValueError("malformed timestamp") from None
    current = time.time() if now is None else now
    if abs(current - ts_value) > max_skew:
        raise ValueError("timestamp outside the allowed window")
    if not 8 <= len(nonce) <= 128:
        raise ValueError("malformed nonce")
    return Claim(node, int(gen), ts, nonce, sig)


def check(key: str, signed: Claim, method: str, path: str, body: bytes) -> None:
    """Raise ValueError unless ``signed`` is a signature of this request with ``key`` (constant time)."""
    expected = signature(key, signed.timestamp, signed.nonce, signed.node, signed.generation, method, path, body)
    if not hmac.compare_digest(expected, signed.signature.lower()):
        raise ValueError("bad signature")


def verify(key: str, headers: dict[str, str], method: str, path: str, body: bytes,
           max_skew: int = 300, now: float | None = None) -> str:
    """Check a request signed with ``key``; return the node name, or raise ValueError saying why.

    For a receiver that knows the one key to expect (tests, a recording server). The API
    picks the key from the claimed name and generation (``control.web.nodeauth``).
    Replay protection (the nonce seen before) is the caller's job: it needs storage.
    """
    signed = claim(headers, max_skew, now)
    check(key, signed, method, path, body)
    return signed.node


# --- webhook deliveries: the zone signs, a receiver checks ---------------------------------
#
# A delivery is signed with its webhook's own secret over ``"<timestamp>.<body>"`` (the raw
# bytes sent), HMAC-SHA256, hex, sent as ``X-Zonefarm-Signature: sha256=<hex>`` with the
# timestamp in ``X-Zonefarm-Timestamp`` (docs/webhooks.md). A receiver needs only this
# function (or its ten lines in any language) and the secret shown when the webhook was made.

HEADER_WEBHOOK = "X-Zonefarm-Webhook"
HEADER_DELIVERY = "X-Zonefarm-Delivery"
HEADER_EVENT = "X-Zonefarm-Event"
WEBHOOK_SIGNATURE_PREFIX = "sha256="


def payload_signature(key: str, timestamp: str, body: bytes) -> str:
    """``HMAC-SHA256(key, "<timestamp>." + body)``, hex: what a webhook delivery is signed with."""
    return hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign_payload(key: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The timestamp and signature headers of one delivery attempt (a retry is signed afresh)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {HEADER_TIMESTAMP: ts, HEADER_SIGNATURE: WEBHOOK_SIGNATURE_PREFIX + payload_signature(key, ts, body)}


def verify_payload(key: str, headers: dict[str, str], body: bytes, max_skew: int = 300,
                   now: float | None = None) -> None:
    """Raise ValueError unless ``body`` carries a fresh signature made with ``key`` (constant time).

    For webhook receivers: the timestamp must be within ``max_skew`` seconds (an old delivery
    replayed later is refused); deduplicate on ``X-Zonefarm-Delivery`` for replays within it.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ts = lowered.get(HEADER_TIMESTAMP.lower(), "")
    sig = lowered.get(HEADER_SIGNATURE.lower(), "")
    if not ts or not sig.startswith(WEBHOOK_SIGNATURE_PREFIX):
        raise ValueError("missing signature headers")
    try:
        ts_value = int(ts)
    except ValueError:
        raise ValueError("malformed timestamp") from None
    if abs((time.time() if now is None else now) - ts_value) > max_skew:
        raise ValueError("timestamp outside the allowed window")
    expected = payload_signature(key, ts, body)
    if not hmac.compare_digest(expected, sig[len(WEBHOOK_SIGNATURE_PREFIX):].lower()):
        raise ValueError("bad signature")

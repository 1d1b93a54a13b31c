"""Authenticating node requests: HMAC-SHA256 with the nodes secret, a timestamp and a nonce.

``control.node.signing.verify`` checks the headers, the clock window and the signature in
constant time; this module adds replay protection. A nonce is stored only after the
signature checks out (so forged requests cannot fill the table) in a table with a
unique index, so the same signed request is refused the second time, even when two
copies arrive at once on different API processes. Nonces older than twice the skew
are pruned: the timestamp check refuses those requests anyway.

Every refusal is a 401 with a short reason; neither the secret nor the expected
signature ever appears in a response or a log line.
"""

from __future__ import annotations

import logging
import threading
import time

import peewee

from control.core.config import Settings
from control.core.db import database
from control.core.errors import unauthorized
from control.farm.models import Nonce
from control.node.signing import HEADER_NONCE, verify
from control.registry.identity import Principal

log = logging.getLogger("zonefarm.nodeauth")
PRUNE_EVERY = 60.0
_last_prune = 0.0
_prune_lock = threading.Lock()


def _prune(settings: Settings, t: float) -> None:
    global _last_prune
    with _prune_lock:
        if t - _last_prune < PRUNE_EVERY:
            return
        _last_prune = t
    Nonce.delete().where(Nonce.ts < t - 2 * settings.callback_skew).execute()


def _node_unauthorized(message: str) -> Exception:
    err = unauthorized(message)
    err.headers = {"WWW-Authenticate": 'ZonefarmNode realm="zonefarm"'}
    return err


def authenticate_node(settings: Settings, headers: dict[str, str], method: str, path_qs: str,
                      raw: bytes) -> Principal:
    """The node a request comes from, or a 401 (bad or missing signature, stale, replayed)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    canonical = {name: lowered.get(name.lower(), "") for name in
                 ("X-Zonefarm-Node", "X-Zonefarm-Timestamp", "X-Zonefarm-Nonce", "X-Zonefarm-Signature")}
    t = time.time()
    try:
        node = verify(settings.nodes_secret, canonical, method, path_qs, raw,
                      max_skew=settings.callback_skew, now=t)
    except ValueError as exc:
        log.info("node request refused on %s %s: %s", method, path_qs.split("?")[0], exc)
        raise _node_unauthorized(f"node signature refused: {exc}") from None
    try:
        with database.atomic():  # a savepoint: a replay must not abort the caller's transaction
            Nonce.create(value=canonical[HEADER_NONCE], node=node[:100], ts=t)
    except peewee.IntegrityError:
        log.warning("replayed node request refused: node %s on %s %s", node, method, path_qs.split("?")[0])
        raise _node_unauthorized("node signature refused: nonce already used (replay)") from None
    _prune(settings, t)
    return Principal("node", node=node)

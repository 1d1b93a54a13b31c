"""Authenticating node requests: HMAC-SHA256 with the node's own key, a timestamp and a nonce.

Each node signs with ``derive_node_key(nodes_secret, name, generation)``, and its name and
key generation are part of what is signed: the key of node A cannot sign as node B, and a
rewritten ``X-Zonefarm-Node`` header breaks the signature. The key to check with comes
from the claimed name and generation and the node's row:

* a name the zone does not know: any generation (only the zone and the Ansible controller
  can derive a key, so a valid signature is an enrollment made for that name);
* a known name: its current generation or a newer one (a rotation: the node row moves on
  and keeps the one before valid for ``node_key_grace`` seconds, for runners started with
  it); an older one is refused, so deregistering (which bumps the generation) revokes.

``control.node.signing`` checks the headers, the clock window and the signature in
constant time; this module adds the key choice and replay protection. A nonce is stored only after the
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
from control.farm.models import Node, Nonce
from control.node.signing import HEADER_GENERATION, HEADER_NONCE, check, claim, derive_node_key
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
                 ("X-Zonefarm-Node", HEADER_GENERATION, "X-Zonefarm-Timestamp", "X-Zonefarm-Nonce",
                  "X-Zonefarm-Signature")}
    t = time.time()
    try:
        signed = claim(canonical, max_skew=settings.callback_skew, now=t)
        row = (Node.select(Node.id, Node.key_generation, Node.key_previous_generation, Node.key_previous_until)
               .where(Node.name == signed.node).first())
        if row is not None and signed.generation < row.key_generation and not (
                signed.generation == row.key_previous_generation and t < row.key_previous_until):
            raise ValueError(f"key generation {signed.generation} of node {signed.node} is revoked "
                             f"(the current one is {row.key_generation})")
        check(derive_node_key(settings.nodes_secret, signed.node, signed.generation), signed, method, path_qs, raw)
    except ValueError as exc:
        log.info("node request refused on %s %s: %s", method, path_qs.split("?")[0], exc)
        raise _node_unauthorized(f"node signature refused: {exc}") from None
    node = signed.node
    if row is not None and signed.generation > row.key_generation:
        # A rotation: the node signs with a newer key the controller wrote; the one before
        # stays valid for a grace period (runners launched before still hold it).
        (Node.update(key_generation=signed.generation, key_previous_generation=row.key_generation,
                     key_previous_until=t + settings.node_key_grace)
         .where(Node.id == row.id, Node.key_generation < signed.generation).execute())
        log.info("node %s now signs with key generation %d", node, signed.generation)
    try:
        with database.atomic():  # a savepoint: a replay must not abort the caller's transaction
            Nonce.create(value=canonical[HEADER_NONCE], node=node[:100], ts=t)
    except peewee.IntegrityError:
        log.warning("replayed node request refused: node %s on %s %s", node, method, path_qs.split("?")[0])
        raise _node_unauthorized("node signature refused: nonce already used (replay)") from None
    _prune(settings, t)
    return Principal("node", node=node)


def signed_generation(headers: dict[str, str]) -> int:
    """The key generation a request authenticated by ``authenticate_node`` was signed with."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return int(lowered[HEADER_GENERATION.lower()])

"""Worker nodes: registration, enrollment, heartbeats, the administrator's controls, losing silent nodes.

A node registers (idempotently: registering again updates it and brings it back online)
and then heartbeats; a node silent past ``node_lease`` is marked lost by the reaper. A
new name is enrolled either by a key the Ansible controller derived for it, or by a
single-use, expiring join token the administrator issues (only its digest is stored).
Cordon stops new work, drain is cordon plus "tell me when it is empty", uncordon undoes
both, and deregistering (refused while tasks run there) keeps the row for the task
history but takes it out of every listing, claim and inventory, and revokes the node's
key (its generation moves on).

Every write checks the state it expects in its WHERE clause and comes first in its
transaction (on SQLite that takes the write lock before anything is read).
"""

from __future__ import annotations

import secrets
from typing import Any

from control.core.db import write_transaction
from control.core.errors import ApiError, conflict, forbidden, not_found, unauthorized
from control.core.models import now
from control.farm.eligibility import active_counts
from control.farm.models import ACTIVE, Node, NodeJoinToken, Task
from control.farm.schemas import NodeHeartbeat, NodeRegister
from control.registry.identity import digest


def get(name: str, *, include_deregistered: bool = False) -> Node:
    """The node named ``name``; 404 when there is none (or it is deregistered)."""
    node = Node.get_or_none(Node.name == name)
    if node is None or (node.state == "deregistered" and not include_deregistered):
        raise not_found("node", name)
    return node


def running(node: Node) -> int:
    """Tasks assigned or running on ``node``."""
    return active_counts([node.id]).get(node.id, 0)


def register(req: NodeRegister, generation: int) -> tuple[Node, bool]:
    """Create or update a node's registration and bring it online; True when it is new.

    ``generation`` is the key generation the request was signed with: a new name's
    signature was checked with the key derived for it, which only the zone and the
    controller can make, so that is its enrollment and the generation it starts at.
    """
    values = req.model_dump()
    t = now()
    Node.update(registered_at=t).where(Node.name == req.name, Node.state == "deregistered").execute()
    if Node.update(**values, state="online", last_seen=t).where(Node.name == req.name).execute():
        return Node.get(Node.name == req.name), False
    return Node.create(**values, state="online", registered_at=t, last_seen=t, key_generation=generation), True


def issue_join_token(name: str, ttl: int) -> tuple[str, float]:
    """A single-use token enrolling ``name`` for ``ttl`` seconds: (the token, shown once; when it expires)."""
    if Node.select().where(Node.name == name, Node.state != "deregistered").exists():
        raise conflict(f"node {name} is registered; it re-registers with its own key")
    plain = "zfj_" + secrets.token_urlsafe(32)
    expires = now() + ttl
    NodeJoinToken.create(token_hash=digest(plain), name=name, expires_at=expires)
    return plain, expires


def enroll(token: str, reg: NodeRegister) -> Node:
    """Spend a join token on the registration it was issued for; returns the node, online.

    The token is spent by the same transaction that enrolls: a refusal leaves it unused.
    The node keeps its key generation (a deregistered one's was already moved on).
    """
    t = now()
    # Write first (SQLite takes its write lock before any read): spend the token if it is live.
    spent = (NodeJoinToken.update(used_at=t)
             .where(NodeJoinToken.token_hash == digest(token), NodeJoinToken.used_at.is_null(),
                    NodeJoinToken.expires_at > t).execute())
    if not spent:
        raise unauthorized("join token refused: unknown, expired or already used")
    issued = NodeJoinToken.get(NodeJoinToken.token_hash == digest(token))
    if issued.name != reg.name:
        raise forbidden(f"this join token enrolls {issued.name!r}, not {reg.name!r}")
    existing = Node.get_or_none(Node.name == reg.name)
    if existing is not None and existing.state != "deregistered":
        raise conflict(f"node {reg.name} is registered; it re-registers with its own key")
    generation = existing.key_generation if existing is not None else 0
    values = {**reg.model_dump(), "state": "online", "registered_at": t, "last_seen": t,
              "cordoned": False, "draining": False, "key_generation": generation,
              "key_previous_generation": None, "key_previous_until": 0}
    if existing is not None:
        Node.update(**values).where(Node.id == existing.id).execute()
        return Node.get_by_id(existing.id)
    return Node.create(**values)


def heartbeat(name: str, req: NodeHeartbeat) -> tuple[Node, list[int]]:
    """Keep a node online; returns it and the ids of its active tasks someone asked to cancel."""
    values: dict[Any, Any] = {Node.last_seen: now(), Node.state: "online"}
    if req.pid is not None:
        values[Node.pid] = req.pid
    if req.resources is not None:
        values[Node.resources] = req.resources
    if not Node.update(values).where(Node.name == name, Node.state != "deregistered").execute():
        raise not_found("node", name)  # a deregistered node is gone
    node = Node.get(Node.name == name)
    cancel = [t.id for t in Task.select(Task.id).where(Task.node == node.id, Task.state.in_(ACTIVE),
                                                        Task.cancel_requested == True)  # noqa: E712
              .order_by(Task.id)]
    return node, cancel


def _set_flags(name: str, **flags: bool) -> Node:
    node = get(name)
    Node.update(**flags).where(Node.id == node.id).execute()
    return Node.get_by_id(node.id)


def cordon(name: str) -> Node:
    """The node takes no new task."""
    return _set_flags(name, cordoned=True)


def uncordon(name: str) -> Node:
    """The node takes tasks again; this also ends a drain."""
    return _set_flags(name, cordoned=False, draining=False)


def drain(name: str) -> Node:
    """Cordon the node and let its tasks finish (``drained`` once it is empty)."""
    return _set_flags(name, cordoned=True, draining=True)


def deregister(name: str) -> None:
    """Take a node out of the farm, keeping its row for the task history; 409 while tasks run there."""
    node = get(name)
    busy = running(node)
    if busy:
        raise conflict(f"node {name} still runs {busy} task(s); drain it first")
    # The key generation moves on: the node's key (and any previous one) stops signing.
    changed = (Node.update(state="deregistered", cordoned=False, draining=False,
                           key_generation=Node.key_generation + 1, key_previous_generation=None,
                           key_previous_until=0)
               .where(Node.id == node.id, Node.state != "deregistered").execute())
    if not changed:
        raise ApiError(404, f"node {name} not found")


def silent(cutoff: float) -> list[Node]:
    """Online nodes not seen since ``cutoff``."""
    return list(Node.select(Node.id, Node.name).where(Node.state == "online", Node.last_seen < cutoff))


def mark_lost(node: Node, cutoff: float) -> bool:
    """``online -> lost`` for a node still silent since ``cutoff``; False when it spoke (or another reaper won)."""
    return bool(Node.update(state="lost")
                .where(Node.id == node.id, Node.state == "online", Node.last_seen < cutoff)
                .execute())


def record_dispatch(refused: dict[str, str], reached: list[str]) -> None:
    """What a dispatch round learnt about reaching nodes over SSH.

    A node in ``refused`` (name -> why: its host key did not match) is cordoned with the
    reason in ``dispatch_error``; a node the round reached loses an old reason. Read first:
    most rounds have nothing to clear and should not queue for the write lock.
    """
    stale = [n.name for n in Node.select(Node.name).where(Node.name.in_(reached), Node.dispatch_error != "")
             ] if reached else []
    if not refused and not stale:
        return
    with write_transaction():
        for name, why in refused.items():
            Node.update(cordoned=True, dispatch_error=why).where(Node.name == name).execute()
        if stale:
            Node.update(dispatch_error="").where(Node.name.in_(stale)).execute()

"""Which nodes can take a task, and why each other node cannot: the farm's one placement rule.

Claiming, broadcast fan-out and "why is my task waiting" all ask the same question, so
they all ask it here (as Nomad does: its feasibility checks and the record of why a
placement failed come out of the same pass over the nodes). A node takes a task when,
checked in this order:

1. it **matches** the task: it is the target node, or (untargeted) it serves the task's
   queue; a broadcast to a region also needs the node to be in that region;
2. it is **available**: online, not draining, not cordoned;
3. it is **not exhausted**: fewer tasks assigned or running there than its concurrency.

The first failing check is the node's :class:`Reason`. A broadcast's fan-out asks only
1 and 2 (a child waits for a slot on its own node); a claim and ``explain`` ask all three.
``available_clause`` and ``claimable_clause`` are the same rule written as SQL, so the
database narrows rows before the Python checks decide.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import peewee

from control.core.models import now
from control.farm.models import ACTIVE, Node, Task

NOT_TARGET = "not_target"
OTHER_REGION = "other_region"
QUEUE_NOT_SERVED = "queue_not_served"
MISMATCHES = (NOT_TARGET, OTHER_REGION, QUEUE_NOT_SERVED)


class Wanted(Protocol):
    """What a placement asks for: a Task row, or a :class:`Want` for a broadcast being submitted."""

    @property
    def target_kind(self) -> str: ...

    @property
    def target_value(self) -> str | None: ...

    @property
    def queue(self) -> str | None: ...


@dataclass(frozen=True)
class Want:
    """A placement not (yet) stored as a task: ``queue`` None means any queue will do."""

    target_kind: str
    target_value: str | None = None
    queue: str | None = None


@dataclass(frozen=True)
class Reason:
    """Why a node cannot take a task: a stable code and a sentence naming the node."""

    code: str
    message: str


@dataclass
class Assessment:
    """One pass over the nodes: those that can take the task and why each other one cannot."""

    fits: list[Node] = field(default_factory=list)
    rejected: dict[str, Reason] = field(default_factory=dict)  # node name -> why not


def active_counts(node_ids: list[int] | None = None) -> dict[int, int]:
    """node id -> tasks assigned or running there (what uses a node's slots)."""
    query = (Task.select(Task.node, peewee.fn.COUNT(Task.id).alias("n"))
             .where(Task.state.in_(ACTIVE), Task.node.is_null(False)))
    if node_ids is not None:
        query = query.where(Task.node.in_(node_ids))
    return {row.node_id: row.n for row in query.group_by(Task.node)}


def mismatch(want: Wanted, node: Node) -> Reason | None:
    """Check 1: is this node one the task may run on at all?"""
    kind = want.target_kind
    if kind == "node":
        if node.name != want.target_value:
            return Reason(NOT_TARGET, f"node {node.name} is not the target node {want.target_value!r}")
        return None  # a targeted task runs on its node whatever queues that node serves
    if kind == "region" and node.region != want.target_value:
        return Reason(OTHER_REGION, f"node {node.name} is in region {node.region!r}, not {want.target_value!r}")
    if want.queue is not None and not node.serves(want.queue):
        return Reason(QUEUE_NOT_SERVED, f"node {node.name} does not serve queue {want.queue!r}")
    return None


def unavailable(node: Node) -> Reason | None:
    """Check 2: does the node take new work at all?"""
    if node.state == "deregistered":
        return Reason("node_deregistered", f"node {node.name} is deregistered")
    if node.state == "lost":
        ago = int(now() - node.last_seen)
        return Reason("node_lost", f"node {node.name} is lost (last seen {ago}s ago)")
    if node.state != "online":
        return Reason("node_" + node.state, f"node {node.name} is {node.state}")
    if node.draining:
        return Reason("node_draining", f"node {node.name} is draining")
    if node.cordoned:
        return Reason("node_cordoned", f"node {node.name} is cordoned")
    return None


def free_slots(node: Node, active: int) -> int:
    """Slots left on a node running ``active`` tasks (negative when over-committed)."""
    return node.concurrency - active


def exhausted(node: Node, active: int) -> Reason | None:
    """Check 3: has the node a free slot?"""
    if free_slots(node, active) <= 0:
        return Reason("node_busy", f"node {node.name} is busy ({active} of {node.concurrency} slots used)")
    return None


def verdict(want: Wanted, node: Node, active: int | None) -> Reason | None:
    """Why ``node`` cannot take ``want`` now, or None when it can.

    ``active`` is the node's tasks assigned or running; None leaves capacity out (fan-out).
    """
    return (mismatch(want, node) or unavailable(node)
            or (exhausted(node, active) if active is not None else None))


def assess(want: Wanted, nodes: Iterable[Node], active: dict[int, int] | None) -> Assessment:
    """Every node's verdict in one pass; ``active`` None leaves capacity out (see :func:`verdict`)."""
    out = Assessment()
    for node in nodes:
        reason = verdict(want, node, active.get(node.id, 0) if active is not None else None)
        if reason is None:
            out.fits.append(node)
        else:
            out.rejected[node.name] = reason
    return out


def available_clause() -> peewee.Expression:
    """Check 2 as SQL: the node rows worth loading for a placement."""
    return (Node.state == "online") & (Node.cordoned == False) & (Node.draining == False)  # noqa: E712


def claimable_clause(nodes: Iterable[Node]) -> peewee.Expression:
    """Check 1 as SQL, for tasks: queued rows some of ``nodes`` match (a superset; :class:`Pool` decides)."""
    listed = list(nodes)
    queues = sorted({q for n in listed for q in (n.queues or [])})
    names = sorted(n.name for n in listed)
    any_match = (Task.target_kind == "any") & Task.queue.in_(queues or [""])
    node_match = (Task.target_kind == "node") & Task.target_value.in_(names or [""])
    return any_match | node_match


class Pool:
    """The nodes one claim can place tasks on, with their slots spent as tasks are placed.

    Built from available nodes and their active counts; a node leaves the pool once
    :func:`verdict` says it cannot take more, so a full farm stops matching early.
    """

    def __init__(self, nodes: Iterable[Node], active: dict[int, int]) -> None:
        listed = list(nodes)
        self.active = {n.id: active.get(n.id, 0) for n in listed}
        self.nodes = {n.id: n for n in listed if unavailable(n) is None and exhausted(n, self.active[n.id]) is None}
        self._by_name = {n.name: n for n in self.nodes.values()}

    def __bool__(self) -> bool:
        return bool(self.nodes)

    def free(self, node: Node) -> int:
        return free_slots(node, self.active[node.id])

    def options(self, task: Wanted) -> list[Node]:
        """The pool's nodes that can take ``task`` now."""
        if task.target_kind == "node":  # only one node can match: look it up rather than scan
            target = self._by_name.get(task.target_value or "")
            shortlist: Iterable[Node] = [target] if target is not None else []
        else:
            shortlist = self.nodes.values()
        return [n for n in shortlist if verdict(task, n, self.active[n.id]) is None]

    def place(self, node: Node) -> None:
        """Spend one of ``node``'s slots."""
        self.active[node.id] += 1
        if exhausted(node, self.active[node.id]) is not None:
            del self.nodes[node.id]
            del self._by_name[node.name]

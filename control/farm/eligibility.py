"""Which nodes can take a task, and why each other node cannot: the farm's one placement rule.

Claiming, broadcast fan-out, submission's "could it ever run" and "why is my task waiting"
all ask the same question, so they all ask it here (as Nomad does: its feasibility checks
and the record of why a placement failed come out of the same pass over the nodes). A node
takes a task when, checked in this order:

1. it **matches** the task: it is the target node, or (untargeted) it serves the task's
   queue; a broadcast to a region also needs the node to be in that region; a label
   selector (``target.labels``) needs every label on the node;
2. it is **available**: online, not draining, not cordoned;
3. it is **big enough**: its capacity (the ``resources`` it reports: ``cpu``, ``memory``
   and ``disk`` bytes, any named one such as ``gpu``) covers the task's ``resources``
   when the node is empty; a resource the node does not report counts as none;
4. it is **not held** for another task: a task that has waited longer than
   ``placement_reserve_after`` holds the next node that can fit it, and no other task
   starts there until it does (so a stream of small tasks cannot starve a big one);
5. it is **not exhausted**: fewer tasks assigned or running there than its concurrency;
6. it has **room**: capacity minus the resources of its assigned and running tasks covers
   the request. Concurrency (5) and resources (6) are separate limits.

The first failing check is the node's :class:`Reason`. A broadcast's fan-out and a
submission's "could any node ever fit it" ask 1 to 3 (a child waits for room on its own
node); a claim and ``explain`` ask all six. ``available_clause`` and ``claimable_clause``
are the same rule written as SQL, so the database narrows rows before the Python checks
decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import peewee

from control.core.models import now
from control.farm.models import ACTIVE, Node, Task

NOT_TARGET = "not_target"
OTHER_REGION = "other_region"
QUEUE_NOT_SERVED = "queue_not_served"
LABELS_DIFFER = "labels_differ"
MISMATCHES = (NOT_TARGET, OTHER_REGION, QUEUE_NOT_SERVED, LABELS_DIFFER)
TOO_SMALL = "node_too_small"
SHORT = "node_short"
BYTES = ("memory", "disk")  # resources counted in bytes; the others are plain counts
EPSILON = 1e-9  # fractional cpus add up with rounding errors: 0.1 + 0.2 still fits in 0.3


class Wanted(Protocol):
    """What a placement asks for: a Task row, or a :class:`Want` for a task being submitted."""

    @property
    def id(self) -> Any: ...

    @property
    def target_kind(self) -> str: ...

    @property
    def target_value(self) -> str | None: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def resources(self) -> Any: ...

    @property
    def target_labels(self) -> Any: ...


@dataclass(frozen=True)
class Want:
    """A placement not (yet) stored as a task: ``queue`` None means any queue will do."""

    target_kind: str
    target_value: str | None = None
    queue: str | None = None
    resources: Mapping[str, float] | None = None
    target_labels: Mapping[str, str] | None = None
    id: int | None = None


@dataclass(frozen=True)
class Reason:
    """Why a node cannot take a task: a stable code and a sentence naming the node.

    A resource check also says which resource and the amount the node has of it (its
    capacity when too small, what is free when short), for ``explain``'s summary.
    """

    code: str
    message: str
    resource: str | None = None
    amount: float | None = None


@dataclass
class Usage:
    """What a node's slots and resources carry: its assigned and running tasks, and who holds it."""

    tasks: int = 0
    reserved: dict[str, float] = field(default_factory=dict)  # resource -> sum of the tasks' requests
    held_for: int | None = None  # the queued task the node is held for

    def copy(self) -> Usage:
        return Usage(self.tasks, dict(self.reserved), self.held_for)


@dataclass
class Assessment:
    """One pass over the nodes: those that can take the task and why each other one cannot."""

    fits: list[Node] = field(default_factory=list)
    rejected: dict[str, Reason] = field(default_factory=dict)  # node name -> why not


def quantity(name: str, value: float) -> str:
    """An amount as people read it: ``8 GiB`` for bytes, ``2 cpu`` or ``1 gpu`` for counts."""
    if name in BYTES:
        for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= scale:
                return f"{value / scale:.4g} {unit}"
        return f"{value:g} B"
    return f"{value:g} {name}"


def describe(name: str, value: float) -> str:
    """``8 GiB memory``, ``2 cpu``: an amount with the resource it is of."""
    return f"{quantity(name, value)} {name}" if name in BYTES else quantity(name, value)


def requested(want: Wanted) -> dict[str, float]:
    """The resources a task asks for (amounts above zero)."""
    asked = want.resources
    return {k: v for k, v in asked.items() if v > 0} if asked else {}


def capacity(node: Node) -> dict[str, float]:
    """What a node reports it has: its capacity per resource."""
    return {k: v for k, v in (node.resources or {}).items() if isinstance(v, (int, float))}


def has(node: Node, name: str) -> float:
    """The node's capacity of one resource (0 when it does not report it): the claim's hot path."""
    value = (node.resources or {}).get(name, 0)
    return value if isinstance(value, (int, float)) else 0


def free_amounts(node: Node, usage: Usage) -> dict[str, float]:
    """Capacity minus the resources reserved by the node's assigned and running tasks."""
    cap = capacity(node)
    return {k: cap.get(k, 0) - usage.reserved.get(k, 0) for k in cap.keys() | usage.reserved.keys()}


def active_counts(node_ids: list[int] | None = None) -> dict[int, int]:
    """node id -> tasks assigned or running there (what uses a node's slots)."""
    query = (Task.select(Task.node, peewee.fn.COUNT(Task.id).alias("n"))
             .where(Task.state.in_(ACTIVE), Task.node.is_null(False)))
    if node_ids is not None:
        query = query.where(Task.node.in_(node_ids))
    return {row.node_id: row.n for row in query.group_by(Task.node)}


def load_usage(node_ids: list[int] | None = None) -> dict[int, Usage]:
    """node id -> its :class:`Usage`: slots used, resources reserved, the task it is held for.

    Only tasks that ask for resources are read row by row; a farm placing by concurrency
    alone pays one aggregate query as before, plus the (usually empty) holds.
    """
    out = {nid: Usage(tasks=n) for nid, n in active_counts(node_ids).items()}
    sized = (Task.select(Task.node, Task.resources)
             .where(Task.state.in_(ACTIVE), Task.node.is_null(False), Task.resources.is_null(False)))
    held = (Task.select(Task.id, Task.reserved_node)
            .where(Task.state == "queued", Task.reserved_node.is_null(False))
            .order_by(Task.created_at, Task.id))
    if node_ids is not None:
        sized = sized.where(Task.node.in_(node_ids))
        held = held.where(Task.reserved_node.in_(node_ids))
    for row in sized:
        reserved = out.setdefault(row.node_id, Usage()).reserved
        for name, amount in (row.resources or {}).items():
            reserved[name] = reserved.get(name, 0) + amount
    for row in held:
        usage = out.setdefault(row.reserved_node, Usage())
        if usage.held_for is None:  # the longest-waiting one, should two ever hold one node
            usage.held_for = row.id
    return out


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


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
    selector = want.target_labels or {}
    has = node.labels or {}
    missing = {k: v for k, v in selector.items() if has.get(k) != v}
    if missing:
        return Reason(LABELS_DIFFER, f"node {node.name} lacks label(s) {_labels_text(missing)}")
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


def too_small(want: Wanted, node: Node) -> Reason | None:
    """Check 3: could the node hold the task's resources at all, empty?"""
    for name, need in (want.resources or {}).items():  # the claim's hot path: no dict built
        have = has(node, name)
        if need > 0 and have + EPSILON < need:
            return Reason(TOO_SMALL, f"node {node.name} has {describe(name, have)} in all; the task needs "
                                     f"{quantity(name, need)}", name, have)
    return None


def held(want: Wanted, usage: Usage, node: Node) -> Reason | None:
    """Check 4: is the node held for another task that has waited too long?"""
    if usage.held_for is not None and usage.held_for != want.id:
        return Reason("node_held", f"node {node.name} is held for task {usage.held_for}, which has waited "
                                   "longest for room there")
    return None


def free_slots(node: Node, active: int) -> int:
    """Slots left on a node running ``active`` tasks (negative when over-committed)."""
    return node.concurrency - active


def exhausted(node: Node, active: int) -> Reason | None:
    """Check 5: has the node a free slot?"""
    if free_slots(node, active) <= 0:
        return Reason("node_busy", f"node {node.name} is busy ({active} of {node.concurrency} slots used)")
    return None


def short(want: Wanted, node: Node, usage: Usage) -> Reason | None:
    """Check 6: is enough of each requested resource free on the node now?"""
    for name, amount in (want.resources or {}).items():
        have = has(node, name) - usage.reserved.get(name, 0)
        if amount > 0 and have + EPSILON < amount:
            return Reason(SHORT, f"node {node.name} has {quantity(name, max(have, 0))} {name} free of "
                                 f"{quantity(name, has(node, name))}; the task needs {quantity(name, amount)}",
                          name, max(have, 0))
    return None


def verdict(want: Wanted, node: Node, usage: Usage | None) -> Reason | None:
    """Why ``node`` cannot take ``want`` now, or None when it can.

    ``usage`` is what the node carries now; None leaves what it carries out (checks 1 to 3:
    a broadcast's fan-out, a submission's "could it ever run").
    """
    reason = mismatch(want, node) or unavailable(node) or too_small(want, node)
    if reason is not None or usage is None:
        return reason
    return held(want, usage, node) or exhausted(node, usage.tasks) or short(want, node, usage)


def assess(want: Wanted, nodes: Iterable[Node], usage: Mapping[int, Usage] | None) -> Assessment:
    """Every node's verdict in one pass; ``usage`` None leaves capacity out (see :func:`verdict`)."""
    out = Assessment()
    for node in nodes:
        reason = verdict(want, node, usage.get(node.id, Usage()) if usage is not None else None)
        if reason is None:
            out.fits.append(node)
        else:
            out.rejected[node.name] = reason
    return out


def never_fits(want: Wanted, nodes: Iterable[Node]) -> tuple[str, str] | None:
    """Whether no registered node the task matches could hold it even empty: (field, why), else None.

    ``nodes`` may include deregistered ones: when the last node that could fit the task
    was deregistered, the sentence says so. None too when no node matches the task at all
    (no node serves its queue yet: that is its own blocker, and a node may register later).
    Submission answers 422 with it; ``explain`` reports it for a task already queued.
    """
    need = requested(want)
    if not need:
        return None
    matching = [n for n in nodes if mismatch(want, n) is None]
    registered = [n for n in matching if n.state != "deregistered"]
    if any(too_small(want, n) is None for n in registered):
        return None
    gone = [n for n in matching if n.state == "deregistered" and too_small(want, n) is None]
    if not registered and not gone:
        return None
    where, why = "resources", f"no registered node has {', '.join(describe(k, v) for k, v in need.items())} at once"
    for name, amount in need.items():
        largest = max(registered, key=lambda n: (capacity(n).get(name, 0), n.name), default=None)
        have = capacity(largest).get(name, 0) if largest is not None else 0
        if have + EPSILON < amount:
            where = f"resources.{name}"
            why = f"needs {describe(name, amount)}; " + (
                f"the largest registered node has {quantity(name, have)} ({largest.name})" if largest is not None
                else "no node that could take it is registered")
            if gone:
                why += "; " + ", ".join(f"{n.name} ({quantity(name, capacity(n).get(name, 0))})" for n in gone) \
                    + " could, but " + ("was" if len(gone) == 1 else "were") + " deregistered"
            break
    return where, why


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


def shortfall(want: Wanted, node: Node, usage: Usage) -> float:
    """How far the node is from room for ``want``: the missing share of each resource, summed."""
    free = free_amounts(node, usage)
    cap = capacity(node)
    return sum(max(0.0, need - free.get(name, 0)) / max(cap.get(name, 0), EPSILON)
               for name, need in requested(want).items())


class Pool:
    """The nodes one claim can place tasks on, with their slots and resources spent as tasks are placed.

    Built from available nodes and their :class:`Usage`; a node leaves the pool once it
    has no slot left, so a full farm stops matching early. ``hold`` picks the node a task
    that waited too long keeps for itself.
    """

    def __init__(self, nodes: Iterable[Node], usage: Mapping[int, Usage]) -> None:
        listed = list(nodes)
        self.all = {n.id: n for n in listed}
        self.usage = {n.id: (usage.get(n.id) or Usage()).copy() for n in listed}
        self.nodes = {n.id: n for n in listed
                      if unavailable(n) is None and exhausted(n, self.usage[n.id].tasks) is None}
        self._by_name = {n.name: n for n in self.nodes.values()}
        self._holds = {u.held_for: nid for nid, u in self.usage.items() if u.held_for is not None}

    def __bool__(self) -> bool:
        return bool(self.nodes)

    def free(self, node: Node) -> int:
        return free_slots(node, self.usage[node.id].tasks)

    def options(self, task: Wanted) -> list[Node]:
        """The pool's nodes that can take ``task`` now."""
        if task.target_kind == "node":  # only one node can match: look it up rather than scan
            target = self._by_name.get(task.target_value or "")
            shortlist: Iterable[Node] = [target] if target is not None else []
        else:
            shortlist = self.nodes.values()
        return [n for n in shortlist if verdict(task, n, self.usage[n.id]) is None]

    def place(self, node: Node, task: Wanted) -> None:
        """Spend one of ``node``'s slots and the task's resources there."""
        usage = self.usage[node.id]
        usage.tasks += 1
        for name, amount in requested(task).items():
            usage.reserved[name] = usage.reserved.get(name, 0) + amount
        kept = self._holds.pop(task.id, None)
        if kept is not None:  # placed, here or elsewhere: the node it held is free for others again
            self.usage[kept].held_for = None
        if exhausted(node, usage.tasks) is not None:
            del self.nodes[node.id]
            del self._by_name[node.name]

    def can_hold(self, task: Wanted, node: Node) -> bool:
        """Could ``task`` keep ``node`` for itself: it matches, is available, big enough, held by no other."""
        usage = self.usage.get(node.id) or Usage()
        return (mismatch(task, node) or unavailable(node) or too_small(task, node)
                or held(task, usage, node)) is None

    def hold(self, task: Wanted, current: Node | None) -> Node | None:
        """The node a task that waited too long keeps: the one it holds if still fit, else the nearest to room.

        ``current`` is the node it holds now, read even when another claimer has it locked:
        a hold stays put while that node could still take the task.
        """
        if current is not None and self.can_hold(task, current):
            chosen: Node | None = current
        else:
            fit = [n for n in self.all.values() if self.can_hold(task, n)]
            chosen = min(fit, key=lambda n: (shortfall(task, n, self.usage[n.id]), -self.free(n), n.id),
                         default=None)
        if chosen is not None and chosen.id in self.usage:
            self.usage[chosen.id].held_for = task.id
            self._holds[task.id] = chosen.id
        return chosen

"""Why a queued task is not starting: the blockers, each with a code and a sentence.

Zimfarm's users asked for this more than anything: a task that sits in the queue
should say whether no node serves its queue, every such node is busy, cordoned or lost,
its target node is unknown, or it simply waits behind others for the next round.

The per-node reasons come from ``control.farm.eligibility``, the rule the claim itself
applies, so what this says cannot drift from what the dispatcher does. A task that asks
for resources is told the largest free amount ("needs 8 GiB memory; the most free is 4 GiB
on wk2; wk5 (16 GiB) is cordoned"), and one no registered node could ever hold (the last
big enough one was deregistered) is told so.
"""

from __future__ import annotations

from typing import Any

import peewee

from control.farm.eligibility import (
    LABELS_DIFFER,
    MISMATCHES,
    SHORT,
    TOO_SMALL,
    Assessment,
    Usage,
    assess,
    capacity,
    describe,
    free_amounts,
    load_usage,
    never_fits,
    quantity,
    requested,
)
from control.farm.models import Node, Task

SHOWN = 5  # nodes named one by one in a resource summary; the rest are counted


def _blocker(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _ahead(task: Task) -> int:
    """Queued tasks a dispatcher considers first (higher priority, or same and older)."""
    query = Task.select().where(
        Task.state == "queued", Task.id != task.id, Task.target_kind.in_(("any", "node")),
        (Task.priority > task.priority)
        | ((Task.priority == task.priority) & ((Task.created_at < task.created_at)
                                               | ((Task.created_at == task.created_at) & (Task.id < task.id)))))
    if task.target_kind == "node":
        query = query.where(Task.target_kind == "node", Task.target_value == task.target_value)
    else:
        query = query.where(Task.queue == task.queue)
    return query.count()


def _targeted(task: Task) -> list[dict[str, str]]:
    node = Node.get_or_none(Node.name == task.target_value)
    if node is None:
        return [_blocker("target_node_unknown", f"no node named {task.target_value!r} is registered")]
    found = assess(task, [node], load_usage([node.id]))
    return [_blocker("target_" + r.code, r.message) for r in found.rejected.values()]


def _resources(task: Task, serving: list[Node], usage: dict[int, Usage], found: Assessment) -> dict[str, str] | None:
    """"needs 8 GiB memory; the most free is 4 GiB on wk2; wk5 (16 GiB) is cordoned", or None.

    Only when some available node lacks room (or size) for the task; the most free is
    over those nodes, and every other serving node says why it cannot take the task.
    """
    need = requested(task)
    sized = [n for n in serving if found.rejected[n.name].code in (SHORT, TOO_SMALL)]
    if not need or not sized:
        return None
    names = [k for k in need if any(found.rejected[n.name].resource == k for n in sized)]
    parts = []
    for name in names:
        def free(n: Node, name: str = name) -> float:
            return max(free_amounts(n, usage.get(n.id, Usage())).get(name, 0), 0)
        best = max(sized, key=lambda n: (free(n), n.name))
        parts.append(f"needs {describe(name, need[name])}; the most free is {quantity(name, free(best))} "
                     f"on {best.name}")
    others = [n for n in serving if n not in sized]
    for node in others[:SHOWN]:
        size = ", ".join(quantity(k, capacity(node).get(k, 0)) for k in names)
        parts.append(f"{node.name} ({size}) {found.rejected[node.name].message.removeprefix(f'node {node.name} ')}")
    if len(others) > SHOWN:
        parts.append(f"{len(others) - SHOWN} more node(s) cannot take it either")
    return _blocker("insufficient_resources", "; ".join(parts))


def _untargeted(task: Task) -> list[dict[str, str]]:
    everyone = list(Node.select())  # deregistered ones too: "the last node big enough was deregistered"
    impossible = never_fits(task, everyone)
    if impossible is not None:
        return [_blocker("no_node_fits", f"no registered node can ever run it: {impossible[1]}")]
    nodes = [n for n in everyone if n.state != "deregistered"]
    usage = load_usage([n.id for n in nodes]) if nodes else {}
    found = assess(task, nodes, usage)
    if found.fits:
        return []
    # nodes that do not serve the queue are no blockers; the others each say why not
    reasons: dict[str, list[Node]] = {}
    for node in nodes:
        reason = found.rejected[node.name]
        if reason.code not in MISMATCHES:
            reasons.setdefault(reason.code, []).append(node)
    serving = [n for group in reasons.values() for n in group]
    if not serving:
        if any(r.code == LABELS_DIFFER for r in found.rejected.values()):
            wanted = ", ".join(f"{k}={v}" for k, v in sorted((task.target_labels or {}).items()))
            return [_blocker("no_node_has_labels", f"no node serving queue {task.queue!r} has label(s) {wanted}")]
        served = sorted({q for n in nodes for q in (n.queues or [])})
        listed = ", ".join(served) if served else "none"
        return [_blocker("no_node_serves_queue",
                         f"no node serves queue {task.queue!r} (queues served: {listed})")]
    sized = _resources(task, serving, usage, found)
    if sized is not None:
        return [sized]
    total = len(serving)
    if set(reasons) == {"node_lost"}:
        return [_blocker("all_lost", f"all {total} node(s) serving queue {task.queue!r} are lost: "
                                     f"{', '.join(n.name for n in reasons['node_lost'])}")]
    if set(reasons) <= {"node_cordoned", "node_draining"}:
        return [_blocker("all_cordoned", f"all {total} node(s) serving queue {task.queue!r} are cordoned")]
    if set(reasons) == {"node_held"}:
        return [_blocker("all_held", "; ".join(found.rejected[n.name].message for n in reasons["node_held"][:SHOWN]))]
    if set(reasons) == {"node_busy"}:
        used = sum(usage[n.id].tasks for n in serving if n.id in usage)
        slots = sum(n.concurrency for n in serving)
        return [_blocker("all_busy", f"all {total} node(s) serving queue {task.queue!r} are busy "
                                     f"({used} of {slots} slots used)")]
    parts = [f"{len(v)} {k.removeprefix('node_')}" for k, v in sorted(reasons.items())]
    return [_blocker("no_node_available",
                     f"none of the {total} node(s) serving queue {task.queue!r} can take it: "
                     + ", ".join(parts))]


def _broadcast(task: Task) -> list[dict[str, str]]:
    rows = (Task.select(Task.state, peewee.fn.COUNT(Task.id).alias("n"))
            .where(Task.parent == task.id).group_by(Task.state))
    counts = {r.state: r.n for r in rows}
    queued = counts.get("queued", 0)
    if not queued:
        return []
    return [_blocker("children_queued", f"{queued} of {sum(counts.values())} child task(s) are still "
                                        "queued; see each child for why")]


def _holding(task: Task) -> list[dict[str, str]]:
    """A task that waited too long holds a node: say which, so its wait reads as progress."""
    if task.reserved_node is None:
        return []
    node = Node.select(Node.name).where(Node.id == task.reserved_node).first()
    if node is None:
        return []
    return [_blocker("holds_node", f"it has waited longest and holds node {node.name}: no other task starts "
                                   "there until this one does")]


def explain(task: Task) -> dict[str, Any]:
    """``{"blockers": [...], "why": str | None}``; both empty unless the task is queued."""
    if task.state != "queued":
        return {"blockers": [], "why": None}
    if task.is_broadcast:
        blockers = _broadcast(task)
    elif task.target_kind == "node":
        blockers = _targeted(task)
    else:
        blockers = _untargeted(task)
    if not task.is_broadcast:
        blockers += _holding(task)
    ahead = _ahead(task) if not task.is_broadcast else 0
    if ahead:
        blockers.append(_blocker("behind_others", f"{ahead} queued task(s) for the same "
                                                  f"{'node' if task.target_kind == 'node' else 'queue'} "
                                                  "come first (higher priority or older)"))
    if not blockers:
        blockers.append(_blocker("waiting_for_dispatcher",
                                 "a node can take it; it starts at the next dispatch round "
                                 "(is a dispatcher running?)"))
    return {"blockers": blockers, "why": "; ".join(b["message"] for b in blockers)}

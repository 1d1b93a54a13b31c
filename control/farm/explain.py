"""Why a queued task is not starting: the blockers, each with a code and a sentence.

Zimfarm's users asked for this more than anything: a task that sits in the queue
should say whether no node serves its queue, every such node is busy, cordoned or lost,
its target node is unknown, or it simply waits behind others for the next round.

The per-node reasons come from ``control.farm.eligibility``, the rule the claim itself
applies, so what this says cannot drift from what the dispatcher does.
"""

from __future__ import annotations

from typing import Any

import peewee

from control.farm.eligibility import MISMATCHES, active_counts, assess
from control.farm.models import Node, Task


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
    found = assess(task, [node], active_counts([node.id]))
    return [_blocker("target_" + r.code, r.message) for r in found.rejected.values()]


def _untargeted(task: Task) -> list[dict[str, str]]:
    nodes = list(Node.select().where(Node.state != "deregistered"))
    active = active_counts([n.id for n in nodes]) if nodes else {}
    found = assess(task, nodes, active)
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
        served = sorted({q for n in nodes for q in (n.queues or [])})
        listed = ", ".join(served) if served else "none"
        return [_blocker("no_node_serves_queue",
                         f"no node serves queue {task.queue!r} (queues served: {listed})")]
    total = len(serving)
    if set(reasons) == {"node_lost"}:
        return [_blocker("all_lost", f"all {total} node(s) serving queue {task.queue!r} are lost: "
                                     f"{', '.join(n.name for n in reasons['node_lost'])}")]
    if set(reasons) <= {"node_cordoned", "node_draining"}:
        return [_blocker("all_cordoned", f"all {total} node(s) serving queue {task.queue!r} are cordoned")]
    if set(reasons) == {"node_busy"}:
        used = sum(active.get(n.id, 0) for n in serving)
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

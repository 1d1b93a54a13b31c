"""Claiming: hand queued tasks to nodes with free slots, atomically, for one dispatcher.

Order: priority (high first), then age, then id. A task goes to a node that is online,
not cordoned, has a free slot (concurrency minus assigned and running tasks) and either
is the task's target node or, for an untargeted task, serves its queue. Among eligible
nodes a requeued task prefers one other than ``last_node``; then the placement decides:

* ``pack`` (the default, Nomad's "binpack"): the node with the fewest free slots that
  still has one, so a node is filled to its concurrency before the next is used. A
  round's Ansible job costs about 0.3 s of CPU per host it touches whatever that host
  carries, so packing keeps a burst of tasks to the fewest hosts per round.
* ``spread``: the node with the most free slots, so load spreads evenly; for tasks that
  contend for a node's CPU, memory or disk more than ``concurrency`` says.

Several dispatchers may claim at once and no task is claimed twice:

* **PostgreSQL**: the claimer locks the eligible node rows and the candidate task rows
  with ``FOR UPDATE SKIP LOCKED``. Another claimer skips rows already locked, so the two
  work on disjoint nodes and tasks, and a node's free-slot count cannot be spent twice.
* **SQLite**: one writer at a time; the claim runs in a ``BEGIN IMMEDIATE`` transaction
  and its UPDATE is still guarded by ``state = 'queued'``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import peewee

from control.core.db import connection, is_postgres, write_transaction
from control.core.models import now
from control.farm.models import ACTIVE, Node, Task, TaskEvent
from control.farm.states import summarise

CLAIMABLE_KINDS = ("any", "node")


def active_counts(node_ids: list[int] | None = None) -> dict[int, int]:
    """node id -> tasks assigned or running there."""
    query = (Task.select(Task.node, peewee.fn.COUNT(Task.id).alias("n"))
             .where(Task.state.in_(ACTIVE), Task.node.is_null(False)))
    if node_ids is not None:
        query = query.where(Task.node.in_(node_ids))
    return {row.node_id: row.n for row in query.group_by(Task.node)}


def _eligible_nodes() -> list[Node]:
    query = (Node.select().where(Node.state == "online", Node.cordoned == False)  # noqa: E712
             .order_by(Node.id))
    if is_postgres():
        query = query.for_update(skip_locked=True)
    return list(query)


def _candidates(free: dict[int, Node], window: int) -> list[Task]:
    """Queued tasks some free node could take, best first, locked on PostgreSQL."""
    queues = sorted({q for n in free.values() for q in (n.queues or [])})
    names = sorted(n.name for n in free.values())
    any_match = (Task.target_kind == "any") & Task.queue.in_(queues or [""])
    node_match = (Task.target_kind == "node") & Task.target_value.in_(names or [""])
    query = (Task.select(Task.id, Task.queue, Task.target_kind, Task.target_value,
                         Task.last_node, Task.parent)
             .where(Task.state == "queued", any_match | node_match)
             .order_by(Task.priority.desc(), Task.created_at, Task.id)
             .limit(window))
    if is_postgres():
        query = query.for_update(of=Task, skip_locked=True)
    return list(query)


def match(candidates: list[Task], free: dict[int, Node], slots: dict[int, int],
          limit: int, placement: str = "pack") -> dict[int, list[int]]:
    """Pick a node for each candidate in order; node id -> task ids. Pure: no database."""
    sign = -1 if placement == "pack" else 1  # pack prefers the fewest free slots, spread the most
    by_name = {n.name: nid for nid, n in free.items()}
    picks: dict[int, list[int]] = defaultdict(list)
    taken = 0
    for task in candidates:
        if taken >= limit:
            break
        if task.target_kind == "node":
            nid = by_name.get(task.target_value or "")
            if nid is None or slots.get(nid, 0) <= 0:
                continue
        else:
            options = [nid for nid, n in free.items()
                       if slots.get(nid, 0) > 0 and task.queue in (n.queues or [])]
            if not options:
                continue
            nid = max(options, key=lambda i: (free[i].name != task.last_node, sign * slots[i], -i))
        slots[nid] -= 1
        picks[nid].append(task.id)
        taken += 1
    return picks


def claim(dispatcher_id: str, limit: int, *, lease: float = 60.0, placement: str = "pack") -> list[Task]:
    """Assign up to ``limit`` queued tasks to nodes for this dispatcher and return them.

    Each returned task is ``assigned``, its ``attempt`` incremented, ``node`` loaded, and
    its lease set to ``lease`` seconds: a dispatcher that dies before launching lets the
    reaper requeue the task when the lease runs out.
    """
    if limit <= 0:
        return []
    with connection(), write_transaction():
        nodes = _eligible_nodes()
        if not nodes:
            return []
        active = active_counts([n.id for n in nodes])
        slots = {n.id: n.concurrency - active.get(n.id, 0) for n in nodes}
        free = {n.id: n for n in nodes if slots[n.id] > 0}
        if not free:
            return []
        candidates = _candidates(free, limit * 3 + 64)
        picks = match(candidates, free, slots, limit, placement)
        if not picks:
            return []
        t = now()
        for nid, ids in picks.items():
            (Task.update(state="assigned", node=nid, attempt=Task.attempt + 1,
                         claimed_by=dispatcher_id, assigned_at=t, started_at=None,
                         finished_at=None, lease_expires_at=t + lease, kill_sent_at=None,
                         progress=0)
             .where(Task.id.in_(ids), Task.state == "queued")
             .execute())
        all_ids = [i for ids in picks.values() for i in ids]
        claimed = list(Task.select(Task, Node).join(Node)
                       .where(Task.id.in_(all_ids), Task.state == "assigned",
                              Task.claimed_by == dispatcher_id, Task.assigned_at == t)
                       .order_by(Task.priority.desc(), Task.created_at, Task.id))
        events: list[dict[str, Any]] = [
            {"task": task.id, "ts": t, "from_state": "queued", "to_state": "assigned",
             "reason": f"claimed by {dispatcher_id} for node {task.node.name}",
             "data": {"node": task.node.name, "attempt": task.attempt}}
            for task in claimed]
        for i in range(0, len(events), 200):
            TaskEvent.insert_many(events[i:i + 200]).execute()
        for parent_id in sorted({task.parent_id for task in claimed if task.parent_id}):
            summarise(parent_id)
        return claimed

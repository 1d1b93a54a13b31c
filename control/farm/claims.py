"""Claiming: hand queued tasks to nodes with free slots, atomically, for one dispatcher.

Order: priority (high first), then age, then id. Which nodes can take a task is
``control.farm.eligibility``'s rule (the target node or one serving the task's queue,
online, not cordoned, with a free slot), the same one ``explain`` reports from. Among
those a requeued task prefers a node other than ``last_node``; then the placement decides:

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

from control.core.db import connection, is_postgres, write_transaction
from control.farm import states
from control.farm.eligibility import Pool, active_counts, available_clause, claimable_clause
from control.farm.models import Node, Task


def _available_nodes() -> list[Node]:
    query = Node.select().where(available_clause()).order_by(Node.id)
    if is_postgres():
        query = query.for_update(skip_locked=True)
    return list(query)


def _candidates(pool: Pool, window: int) -> list[Task]:
    """Queued tasks some node of the pool could take, best first, locked on PostgreSQL."""
    query = (Task.select(Task.id, Task.queue, Task.target_kind, Task.target_value,
                         Task.last_node, Task.parent)
             .where(Task.state == "queued", claimable_clause(pool.nodes.values()))
             .order_by(Task.priority.desc(), Task.created_at, Task.id)
             .limit(window))
    if is_postgres():
        query = query.for_update(of=Task, skip_locked=True)
    return list(query)


def match(candidates: list[Task], pool: Pool, limit: int, placement: str = "pack") -> dict[int, list[int]]:
    """Pick a node for each candidate in order; node id -> task ids. Pure: no database."""
    sign = -1 if placement == "pack" else 1  # pack prefers the fewest free slots, spread the most
    picks: dict[int, list[int]] = defaultdict(list)
    taken = 0
    for task in candidates:
        if taken >= limit or not pool:
            break
        options = pool.options(task)
        if not options:
            continue
        node = max(options, key=lambda n: (n.name != task.last_node, sign * pool.free(n), -n.id))
        pool.place(node)
        picks[node.id].append(task.id)
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
        nodes = _available_nodes()
        if not nodes:
            return []
        pool = Pool(nodes, active_counts([n.id for n in nodes]))
        if not pool:
            return []
        picks = match(_candidates(pool, limit * 3 + 64), pool, limit, placement)
        if not picks:
            return []
        return states.assign(picks, dispatcher_id, lease)

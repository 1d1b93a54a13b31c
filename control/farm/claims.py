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

Among nodes with as many free slots, a task that asks for resources goes to the node with
the least of them left free (pack) or the most (spread). A node's resources are spent as
the claim places tasks, so one claim never over-commits a node.

A task that asks for resources, queued longer than ``placement_reserve_after``, that no
node has room for holds the node nearest to room for it (``Pool.hold``, written as ``Task.reserved_node`` with an
event): smaller tasks no longer start there, and it takes the node once enough has ended.

Several dispatchers may claim at once and no task is claimed twice:

* **PostgreSQL**: the claimer locks the eligible node rows and the candidate task rows
  with ``FOR UPDATE SKIP LOCKED``. Another claimer skips rows already locked, so the two
  work on disjoint nodes and tasks, and a node's free slots and resources cannot be spent
  twice (what a node carries is read after its row is locked). A hold is written on the
  task row the claimer has locked; the node it names is read without a lock, so a hold
  does not move while another claimer has its node.
* **SQLite**: one writer at a time; the claim runs in a ``BEGIN IMMEDIATE`` transaction
  and its UPDATE is still guarded by ``state = 'queued'``.
"""

from __future__ import annotations

from collections import defaultdict

import peewee

from control.core.db import connection, is_postgres, write_transaction
from control.core.models import now
from control.farm import states
from control.farm.eligibility import (
    Pool,
    available_clause,
    claimable_clause,
    load_usage,
    requested,
)
from control.farm.models import Node, Task


def _available_nodes(scope: peewee.Expression | None = None) -> list[Node]:
    query = Node.select().where(available_clause()).order_by(Node.id)
    if scope is not None:
        query = query.where(scope)
    if is_postgres():
        query = query.for_update(skip_locked=True)
    return list(query)


def _candidates(pool: Pool, window: int) -> list[Task]:
    """Queued tasks some node of the pool could take, best first, locked on PostgreSQL."""
    query = (Task.select(Task.id, Task.queue, Task.target_kind, Task.target_value,
                         Task.last_node, Task.parent, Task.resources, Task.target_labels,
                         Task.reserved_node, Task.created_at)
             .where(Task.state == "queued", claimable_clause(pool.nodes.values()))
             .order_by(Task.priority.desc(), Task.created_at, Task.id)
             .limit(window))
    if is_postgres():
        query = query.for_update(of=Task, skip_locked=True)
    return list(query)


def _room(pool: Pool, node: Node, need: dict[str, float]) -> float:
    """The share of the task's resources (``need``) left free on ``node``; 0 for a task that asks for none."""
    if not need:
        return 0.0
    have, reserved = node.resources or {}, pool.usage[node.id].reserved
    return sum((have[k] - reserved.get(k, 0)) / have[k] for k in need if have.get(k))


def match(candidates: list[Task], pool: Pool, limit: int, placement: str = "pack", *,
          hold_before: float | None = None, held: dict[int, Node] | None = None
          ) -> tuple[dict[int, list[int]], dict[int, Node]]:
    """Pick a node for each candidate in order: (node id -> task ids, task id -> node it now holds).

    A candidate that asks for resources, created before ``hold_before``, that no node has
    room for holds one (``Pool.hold``; without resources a task only waits for a slot, which
    it gets in claim order anyway); ``held`` is node id -> node for the holds candidates already have.
    The second mapping lists only holds that are new or moved. Pure: no database.
    """
    sign = -1 if placement == "pack" else 1  # pack prefers the fewest free slots, spread the most
    picks: dict[int, list[int]] = defaultdict(list)
    holds: dict[int, Node] = {}
    held = held or {}
    taken = 0
    for task in candidates:
        if taken >= limit or not pool:
            break
        options = pool.options(task)
        if not options:
            if hold_before is not None and task.created_at < hold_before and requested(task):
                current = held.get(task.reserved_node) if task.reserved_node is not None else None
                node = pool.hold(task, current)
                if node is not None and node.id != task.reserved_node:
                    holds[task.id] = node
            continue
        need = requested(task)
        node = max(options, key=lambda n: (n.name != task.last_node, sign * pool.free(n),
                                           sign * _room(pool, n, need), -n.id))
        pool.place(node, task)
        picks[node.id].append(task.id)
        taken += 1
    return picks, holds


def claim(dispatcher_id: str, limit: int, *, lease: float = 60.0, placement: str = "pack",
          reserve_after: float = 600.0, nodes: peewee.Expression | None = None) -> list[Task]:
    """Assign up to ``limit`` queued tasks to nodes for this dispatcher and return them.

    Each returned task is ``assigned``, its ``attempt`` incremented, ``node`` loaded, and
    its lease set to ``lease`` seconds: a dispatcher that dies before launching lets the
    reaper requeue the task when the lease runs out. A task queued for longer than
    ``reserve_after`` seconds (0: never) that no node has room for holds one. ``nodes``
    limits the nodes claimed for (a ``Node`` condition: the dispatcher's regions,
    ``control.farm.regions``); a task that only other nodes can take is left to their dispatcher.
    """
    if limit <= 0:
        return []
    with connection(), write_transaction():
        available = _available_nodes(nodes)
        if not available:
            return []
        pool = Pool(available, load_usage([n.id for n in available]))
        if not pool:
            return []
        candidates = _candidates(pool, limit * 3 + 64)
        hold_before = now() - reserve_after if reserve_after > 0 else None
        held_ids = {t.reserved_node for t in candidates if t.reserved_node is not None}
        held = {n.id: n for n in Node.select().where(Node.id.in_(held_ids))} if held_ids else {}
        picks, holds = match(candidates, pool, limit, placement, hold_before=hold_before, held=held)
        for task_id, node in holds.items():
            states.hold(task_id, node.id, node.name, reserve_after)
        if not picks:
            return []
        return states.assign(picks, dispatcher_id, lease)

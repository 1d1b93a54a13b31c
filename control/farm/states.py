"""The task state machine, and the only writer of task rows. Every change is one guarded
UPDATE plus one TaskEvent.

``queued -> assigned -> running -> succeeded | failed | cancelled | timed_out``; ``lost``
goes back to ``queued`` while attempts remain, else ``failed``. A transition reads the
current state, then updates ``WHERE id = ? AND state = <what it read> AND attempt = ?``:
when two actors race (a callback and the reaper, two dispatchers) exactly one UPDATE
matches, so a task never has two terminal states and no completion is counted twice.

A broadcast parent is never run itself: its state summarises its children and is
recomputed, under a lock on the parent row, whenever a child moves.

Writes that are not state changes live here too (a new task and its first event, a
claim's lease renewed, progress, a cancel request, a kill handed out), each guarded by
the state it expects, so one module says everything that can happen to a task row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from control.core import actor as actors
from control.core.db import database, is_postgres, write_transaction
from control.core.models import now
from control.farm.models import ACTIVE, TERMINAL, Node, Task, TaskEvent

log = logging.getLogger("zonefarm.farm")

# to_state -> the states it may be reached from
ALLOWED: dict[str, tuple[str, ...]] = {
    "queued": ("assigned", "lost"),
    "assigned": ("queued",),
    "running": ("assigned",),
    "succeeded": ("assigned", "running"),
    "failed": ("queued", "assigned", "running", "lost"),
    "cancelled": ("queued", "assigned", "running", "lost"),
    "timed_out": ("assigned", "running", "lost"),
    "lost": ("assigned", "running"),
}
_TRIES = 5


def lock_task(task_id: int) -> None:
    """Serialise writers of one task inside the current transaction.

    PostgreSQL: a row lock. SQLite needs nothing: every write transaction begins IMMEDIATE
    (``control.core.db``), so it holds the database write lock before it reads anything.
    """
    if is_postgres():
        database.execute_sql("SELECT id FROM task WHERE id = %s FOR UPDATE", (task_id,))


def _columns(to_state: str, reason: str, row: Task, fields: dict[str, Any]) -> dict[Any, Any]:
    t = now()
    values: dict[str, Any] = {"state": to_state, "reason": reason}
    if to_state == "queued":
        values.update(node=None, claimed_by=None, assigned_at=None, started_at=None,
                      lease_expires_at=None, kill_sent_at=None, progress=0)
    elif to_state == "running":
        values.update(started_at=t)
    elif to_state == "lost":
        values.update(lease_expires_at=None)
        if row.node_id is not None:
            node = Node.select(Node.name).where(Node.id == row.node_id).first()
            values["last_node"] = node.name if node else None
    elif to_state in TERMINAL:
        values.update(finished_at=t, lease_expires_at=None)
    values.update(fields)
    return {getattr(Task, k): v for k, v in values.items()}


def transition(task_id: int, to_state: str, reason: str, expect: Iterable[str] | None = None,
               *, event_data: dict[str, Any] | None = None, actor: str | None = None, **data: Any) -> bool:
    """Move a task to ``to_state`` if it is in one of ``expect`` (default: the legal sources).

    ``data`` are extra Task columns to set in the same UPDATE (``exit_code``, ``outputs``,
    ``lease_expires_at``...); the task's ``reason`` column always takes ``reason``.
    Returns False when another actor got there first or the move is not allowed from the
    current state; nothing is written then. The event's ``actor`` defaults to who is acting
    now (``control.core.actor``).
    """
    if to_state not in ALLOWED:
        raise ValueError(f"unknown task state {to_state!r}")
    allowed = tuple(expect) if expect is not None else ALLOWED[to_state]
    with write_transaction():
        for _ in range(_TRIES):
            row = (Task.select(Task.id, Task.state, Task.attempt, Task.node, Task.parent)
                   .where(Task.id == task_id).first())
            if row is None or row.state not in allowed:
                return False
            values = _columns(to_state, reason, row, data)
            changed = (Task.update(values)
                       .where(Task.id == task_id, Task.state == row.state,
                              Task.attempt == row.attempt)
                       .execute())
            if not changed:
                continue  # someone moved it between our read and our write: look again
            extra = dict(event_data or {})
            if "exit_code" in data and data["exit_code"] is not None:
                extra.setdefault("exit_code", data["exit_code"])
            TaskEvent.create(task=task_id, from_state=row.state, to_state=to_state,
                             reason=reason, data=extra or None, actor=actor or actors.current())
            if row.parent_id is not None:
                summarise(row.parent_id)
            return True
    return False


def release(task_id: int, reason: str) -> str | None:
    """A claim the dispatcher could not launch: back to queued, or failed with no attempts left.

    Returns the new state, or None when the task was no longer ``assigned``.
    """
    task = Task.get_or_none(Task.id == task_id)
    if task is None or task.state != "assigned":
        return None
    if task.cancel_requested:
        return "cancelled" if transition(task_id, "cancelled", f"{reason}; cancel requested",
                                         expect=("assigned",)) else None
    if task.attempt < task.max_attempts:
        return "queued" if transition(task_id, "queued", reason, expect=("assigned",)) else None
    return "failed" if transition(task_id, "failed",
                                  f"{reason}; no attempts left ({task.attempt}/{task.max_attempts})",
                                  expect=("assigned",)) else None


def requeue(task_id: int, reason: str) -> str | None:
    """A ``lost`` task goes back to the queue while attempts remain, else it fails.

    A task someone asked to cancel ends ``cancelled`` instead, and one already past its
    timeout ends ``timed_out``: running it again would undo what was asked.
    """
    task = Task.get_or_none(Task.id == task_id)
    if task is None or task.state != "lost":
        return None
    if task.cancel_requested:
        target, why = "cancelled", f"{reason}; cancel was requested"
    elif task.started_at is not None and task.started_at + task.timeout < now():
        target, why = "timed_out", f"{reason}; past its {task.timeout}s timeout"
    elif task.attempt < task.max_attempts:
        target, why = "queued", f"{reason}; requeued (attempt {task.attempt} of {task.max_attempts} used)"
    else:
        target, why = "failed", f"{reason}; no attempts left ({task.attempt}/{task.max_attempts})"
    return target if transition(task_id, target, why, expect=("lost",)) else None


def lose(task_id: int, reason: str) -> str | None:
    """An active task whose runner or node went silent: ``lost``, then requeued or failed."""
    with write_transaction():
        if not transition(task_id, "lost", reason, expect=ACTIVE):
            return None
        return requeue(task_id, reason)


def summarise(parent_id: int) -> None:
    """Recompute a broadcast parent's state from its children, with an event when it changes."""
    if is_postgres():
        database.execute_sql("SELECT id FROM task WHERE id = %s FOR UPDATE", (parent_id,))
    parent = Task.select(Task.id, Task.state).where(Task.id == parent_id).first()
    if parent is None or parent.state in TERMINAL:
        return
    counts: dict[str, int] = {}
    for child in Task.select(Task.state).where(Task.parent == parent_id):
        counts[child.state] = counts.get(child.state, 0) + 1
    total = sum(counts.values())
    if total and all(s in TERMINAL for s in counts):
        for state in ("failed", "timed_out", "cancelled", "succeeded"):
            if counts.get(state):
                desired = state
                break
    elif any(counts.get(s) for s in ACTIVE):
        desired = "running"
    else:
        desired = "queued"
    if desired == parent.state:
        return
    values: dict[Any, Any] = {Task.state: desired}
    if desired == "running":
        values[Task.started_at] = now()
    if desired in TERMINAL:
        values[Task.finished_at] = now()
    changed = Task.update(values).where(Task.id == parent_id, Task.state == parent.state).execute()
    if changed:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        TaskEvent.create(task=parent_id, from_state=parent.state, to_state=desired,
                         reason=f"children: {summary}", data=counts, actor=actors.current())


def record(task_id: int, state: str, reason: str, data: dict[str, Any] | None = None) -> None:
    """An event that is not a state change (a cancel request, a kill sent)."""
    TaskEvent.create(task=task_id, from_state=state, to_state=state, reason=reason, data=data,
                     actor=actors.current())


def enqueue(fields: dict[str, Any], reason: str, data: dict[str, Any] | None = None, *,
            t: float | None = None) -> Task:
    """A new ``queued`` task and its first event, created at ``t`` (a broadcast's rows share one)."""
    t = now() if t is None else t
    task = Task.create(**fields, state="queued", created_at=t)
    TaskEvent.create(task=task, ts=t, to_state="queued", reason=reason, data=data, actor=actors.current())
    return task


def enqueue_many(rows: list[dict[str, Any]], reasons: list[str], *, t: float | None = None) -> list[int]:
    """New ``queued`` tasks and their first events, in bulk (a batch); their ids, in order.

    Each slice of rows is one INSERT ... RETURNING id (PostgreSQL, and SQLite from 3.35),
    the events one INSERT per slice: building one statement per row cost more than the rest
    of a batch together.
    """
    t = now() if t is None else t
    fields = [{**row, "state": "queued", "created_at": t} for row in rows]
    ids: list[int] = []
    for i in range(0, len(fields), 200):
        ids += [r[0] for r in Task.insert_many(fields[i:i + 200]).returning(Task.id).tuples().execute()]
    actor = actors.current()
    events = [{"task": task_id, "ts": t, "from_state": None, "to_state": "queued", "reason": reason, "data": None,
               "actor": actor} for task_id, reason in zip(ids, reasons, strict=True)]
    for i in range(0, len(events), 200):
        TaskEvent.insert_many(events[i:i + 200]).execute()
    return ids


def assign(picks: dict[int, list[int]], dispatcher_id: str, lease: float) -> list[Task]:
    """``queued -> assigned`` for a claim: node id -> task ids; returns the tasks it moved.

    One UPDATE per node, guarded by ``state = 'queued'``; the attempt counter goes up and
    the lease starts. The tasks come back with ``node`` loaded, best first.
    """
    t = now()
    for nid, ids in picks.items():
        (Task.update(state="assigned", node=nid, attempt=Task.attempt + 1,
                     claimed_by=dispatcher_id, assigned_at=t, started_at=None,
                     finished_at=None, lease_expires_at=t + lease, kill_sent_at=None,
                     progress=0, reserved_node=None)
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
         "data": {"node": task.node.name, "attempt": task.attempt}, "actor": f"dispatcher:{dispatcher_id}"}
        for task in claimed]
    for i in range(0, len(events), 200):
        TaskEvent.insert_many(events[i:i + 200]).execute()
    for parent_id in sorted({task.parent_id for task in claimed if task.parent_id}):
        summarise(parent_id)
    return claimed


def hold(task_id: int, node_id: int, node_name: str, waited: float) -> bool:
    """A queued task that waited past ``waited`` seconds holds ``node_id`` (``control.farm.eligibility``).

    Guarded by ``state = 'queued'``; the event says which node, so the history shows why
    smaller tasks stopped starting there.
    """
    changed = Task.update(reserved_node=node_id).where(Task.id == task_id, Task.state == "queued").execute()
    if changed:
        record(task_id, "queued", f"queued over {waited:g}s: holds node {node_name}, where no other task "
                                  "starts until this one does", {"holds": node_name})
    return bool(changed)


def extend_claims(dispatcher_id: str, task_ids: list[int], lease: float) -> int:
    """Renew the lease of this dispatcher's claims still ``assigned``; how many were renewed."""
    return (Task.update(lease_expires_at=now() + lease)
            .where(Task.id.in_(task_ids), Task.state == "assigned", Task.claimed_by == dispatcher_id)
            .execute())


def renew(task_id: int, attempt: int, lease_expires_at: float, progress: float | None = None) -> bool:
    """A live attempt's report: move its lease on (and its progress), if it is still the current one."""
    values: dict[Any, Any] = {Task.lease_expires_at: lease_expires_at}
    if progress is not None:
        values[Task.progress] = progress
    return bool(Task.update(values)
                .where(Task.id == task_id, Task.state.in_(ACTIVE), Task.attempt == attempt)
                .execute())


def request_cancel(task_id: int, who: str) -> bool:
    """Flag an active task for the reaper to kill; the event is written once, by the first request."""
    state = Task.select(Task.state).where(Task.id == task_id).scalar()
    changed = (Task.update(cancel_requested=True)
               .where(Task.id == task_id, Task.state.in_(ACTIVE), Task.cancel_requested == False)  # noqa: E712
               .execute())
    if changed:
        record(task_id, state, f"cancel requested by {who}", {"cancel_requested": True})
    return bool(changed)


def _cancel_one(task: Task, who: str) -> bool:
    """Cancel a queued or lost task now; flag an active one for the reaper to kill."""
    if task.state in ("queued", "lost"):
        return transition(task.id, "cancelled", f"cancelled by {who}", expect=("queued", "lost"))
    if task.state in ACTIVE:
        request_cancel(task.id, who)
        return True
    return False


def cancel(task_id: int, who: str) -> bool:
    """A user's cancel: the task, or every child of a broadcast still going.

    Returns False when there was nothing left to cancel (the task, or every child, had ended).
    """
    with write_transaction():
        lock_task(task_id)
        task = Task.get_or_none(Task.id == task_id)
        if task is None:
            return False
        if task.is_broadcast:
            children = list(Task.select().where(Task.parent == task_id, Task.state.not_in(TERMINAL))
                            .order_by(Task.id))
            if not children:
                return False
            for child in children:
                _cancel_one(child, who)
            summarise(task_id)
            return True
        if task.state in TERMINAL:
            return False
        _cancel_one(task, who)
        return True


def send_kill(task: Task, t: float, kill_reason: str) -> bool:
    """Hand out one kill of ``task`` (loaded with its node) at ``t``, with its event.

    Guarded on the ``kill_sent_at`` read with ``task``: False when another dispatcher
    took this kill since.
    """
    previous = Task.kill_sent_at.is_null() if task.kill_sent_at is None \
        else (Task.kill_sent_at == task.kill_sent_at)
    if not Task.update(kill_sent_at=t).where(Task.id == task.id, previous).execute():
        return False
    record(task.id, task.state, f"kill sent to node {task.node.name} ({kill_reason})",
           {"kill_reason": kill_reason})
    return True

"""The task state machine. Every change is one guarded UPDATE plus one TaskEvent.

``queued -> assigned -> running -> succeeded | failed | cancelled | timed_out``; ``lost``
goes back to ``queued`` while attempts remain, else ``failed``. A transition reads the
current state, then updates ``WHERE id = ? AND state = <what it read> AND attempt = ?``:
when two actors race (a callback and the reaper, two dispatchers) exactly one UPDATE
matches, so a task never has two terminal states and no completion is counted twice.

A broadcast parent is never run itself: its state summarises its children and is
recomputed, under a lock on the parent row, whenever a child moves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

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
               *, event_data: dict[str, Any] | None = None, **data: Any) -> bool:
    """Move a task to ``to_state`` if it is in one of ``expect`` (default: the legal sources).

    ``data`` are extra Task columns to set in the same UPDATE (``exit_code``, ``outputs``,
    ``lease_expires_at``...); the task's ``reason`` column always takes ``reason``.
    Returns False when another actor got there first or the move is not allowed from the
    current state; nothing is written then.
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
                             reason=reason, data=extra or None)
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
                         reason=f"children: {summary}", data=counts)


def record(task_id: int, state: str, reason: str, data: dict[str, Any] | None = None) -> None:
    """An event that is not a state change (a cancel request, a kill sent)."""
    TaskEvent.create(task=task_id, from_state=state, to_state=state, reason=reason, data=data)

"""A node's reports on a task it runs: started, progress, log, finished.

Only the node the task is assigned to, and only for the current attempt, may report
(403 otherwise: the runner then kills its child, the attempt being stale). Any report
moves the lease on; the first one moves ``assigned -> running``; ``finished`` ends the
task. A repeated or late report on an ended task changes nothing.

Log chunks are stored once (see docs/farm-contract.md, "Log callbacks are idempotent"):
each attempt's output is one contiguous run of the task's log beginning at the
``log_start`` recorded in its ``running`` event, so a chunk the API already holds (its
answer was lost and the runner sent it again) is skipped, or only its new tail kept.

A task's stored log is capped (setting ``task_log_max``, characters over all attempts): the
chunk that crosses the cap is cut there and ends with one truncation line, and later
chunks are dropped; the reports themselves are answered as usual, so the task runs on and
finishes normally.
"""

from __future__ import annotations

import peewee

from control.core.errors import forbidden, not_found
from control.core.models import now
from control.farm import states
from control.farm.models import ACTIVE, TERMINAL, Node, Task, TaskEvent, TaskLog
from control.farm.schemas import Callback, CallbackOut

TRUNCATED = "\n[zonefarm: the log was truncated at {limit} characters; the rest of the output was not stored]\n"


def final_state(task: Task, body: Callback) -> tuple[str, str]:
    """The state a ``finished`` report ends the task in, and the reason to record."""
    if body.reason is not None:
        return body.reason, f"{body.reason.replace('_', ' ')}: killed on node {task.node.name}"
    if body.failure:  # the node ended it: a limit, or the sandbox refused what it was asked to run
        return "failed", f"{body.failure} (exit code {body.exit_code} on node {task.node.name})"
    if body.exit_code == 0:
        return "succeeded", f"exit code 0 on node {task.node.name}"
    if task.cancel_requested:
        return "cancelled", f"cancelled: exit code {body.exit_code} on node {task.node.name}"
    return "failed", f"exit code {body.exit_code} on node {task.node.name}"


def log_end(task_id: int) -> tuple[int, int]:
    """The next chunk's ``seq`` and the log's length in characters (over every attempt)."""
    last = (TaskLog.select(TaskLog.seq, TaskLog.start, TaskLog.text).where(TaskLog.task == task_id)
            .order_by(TaskLog.seq.desc()).first())
    return (last.seq + 1, last.start + len(last.text)) if last is not None else (1, 0)


def attempt_log_start(task_id: int, attempt: int) -> int | None:
    """Where this attempt's output begins in the task's log, recorded when the attempt started running.

    Only the current attempt may append (a stale one gets 403), so each attempt's output is
    one contiguous run that begins where the log stood at its ``running`` event. None for an
    attempt that started before the offset was recorded.
    """
    event = (TaskEvent.select(TaskEvent.data)
             .where(TaskEvent.task == task_id, TaskEvent.to_state == "running").order_by(TaskEvent.id.desc()).first())
    data = event.data if event is not None else None
    if not data or data.get("attempt") != attempt or not isinstance(data.get("log_start"), int):
        return None
    return int(data["log_start"])


def append_log(task_id: int, attempt: int, text: str, offset: int | None, log_max: int | None = None) -> None:
    """Store a chunk once: a retried one (its answer was lost) is skipped, or only its new tail kept.

    ``offset`` is where the runner put the chunk in this attempt's output; without it (an
    older runner) the chunk is appended as it comes. ``log_max`` caps the task's stored log.
    """
    seq, end = log_end(task_id)
    if log_max is not None and end >= log_max:
        return  # the cap was reached: its truncation line is stored already
    start = attempt_log_start(task_id, attempt) if offset is not None else None
    if offset is not None and start is not None:
        held = end - start
        if offset + len(text) <= held:
            return
        if offset < held:
            text = text[held - offset:]
    if log_max is not None and end + len(text) > log_max:
        text = text[:log_max - end] + TRUNCATED.format(limit=log_max)
    TaskLog.create(task=task_id, seq=seq, start=end, text=text)


def node_task(task_id: int, node_name: str) -> Task:
    """The task a node reports on, locked; refused unless it is assigned to that node."""
    states.lock_task(task_id)
    task = Task.select(Task, Node).join(Node, peewee.JOIN.LEFT_OUTER).where(Task.id == task_id).first()
    if task is None:
        raise not_found("task", task_id)
    if task.node_id is None or task.node_name != node_name:
        raise forbidden(f"task {task_id} is not assigned to node {node_name}")
    return task


def report(task_id: int, node_name: str, body: Callback, lease: int, log_max: int | None = None) -> CallbackOut:
    """Apply one report from ``node_name``; ``lease`` is how many seconds it buys the attempt.

    ``log_max`` (setting ``task_log_max``) caps the characters of output stored for the task.

    Runs inside the caller's write transaction, the task row locked first so a callback
    and the reaper (or two callbacks) take turns.
    """
    task = node_task(task_id, node_name)
    if body.attempt != task.attempt:
        raise forbidden(f"attempt {body.attempt} of task {task_id} is stale; the current attempt is {task.attempt}")
    if task.state in TERMINAL:  # a repeated or late report: change nothing
        return CallbackOut(cancel=task.state in ("cancelled", "timed_out"), state=task.state, lease=lease)
    if task.state not in ACTIVE:
        raise forbidden(f"task {task_id} is {task.state}, not running on node {node_name}")
    lease_at = now() + lease
    node = task.node.name
    if task.state == "assigned":
        # Any report means the attempt started; a task that ended within the runner's start
        # grace reports only "finished", and still gets its running event first.
        how = "started" if body.event != "finished" else "started (reported with its end)"
        states.transition(task_id, "running", f"{how} on node {node}", expect=("assigned",),
                          event_data={"node": node, "attempt": task.attempt, "log_start": log_end(task_id)[1]},
                          lease_expires_at=lease_at)
    if body.event == "finished":
        final, reason = final_state(task, body)
        extra: dict[str, object] = {"exit_code": body.exit_code, "outputs": body.outputs}
        if final == "succeeded":
            extra["progress"] = 100.0
        states.transition(task_id, final, reason, expect=ACTIVE,
                          event_data={"node": node, "attempt": task.attempt}, **extra)
    else:
        states.renew(task_id, task.attempt, lease_at, progress=body.percent)
        if body.event == "log" and body.data:
            append_log(task_id, task.attempt, body.data, body.offset, log_max)
    current = Task.select(Task.state, Task.cancel_requested).where(Task.id == task_id).first()
    return CallbackOut(cancel=bool(current.cancel_requested) or current.state in ("cancelled", "timed_out"),
                       state=current.state, lease=lease)

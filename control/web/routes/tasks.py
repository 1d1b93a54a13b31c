"""Tasks: submit, list, explain, follow (events, log), cancel, and the nodes' signed callbacks.

These handlers parse, check access and call the farm's services: ``control.farm.submit``
(checks, broadcast fan-out, creation), ``control.farm.states`` (cancel) and
``control.farm.callbacks`` (what a node reports). Users see the tasks they submitted and
those of the spaces they belong to; only the submitter or the administrator cancels.
"""

from __future__ import annotations

from typing import Any

import peewee
from pydantic import BaseModel, Field

from control.core.errors import conflict, not_found
from control.core.models import iso
from control.core.schemas import Page
from control.farm import callbacks, catalogue, states, submit
from control.farm.explain import explain
from control.farm.models import TASK_STATES, TERMINAL, Node, Task, TaskEvent, TaskLog
from control.farm.schemas import (
    Callback,
    CallbackOut,
    ChildOut,
    EventList,
    EventOut,
    LogOut,
    TargetOut,
    TaskCreate,
    TaskDetail,
    TaskOut,
    TaskTypeList,
    TaskTypeOut,
)
from control.registry.access import cancel_owned, see_owned, visible_owned
from control.registry.identity import require_user_or_root
from control.web.listing import query_time
from control.web.routing import Context, Query, Reply, route

TAG = "tasks"
MAX_LOG_READ = 1024 * 1024


def task_out(task: Task) -> TaskOut:
    return TaskOut(**_fields(task))


def _fields(task: Task) -> dict[str, Any]:
    return dict(
        id=task.id, name=task.name, params=task.params or {}, queue=task.queue,
        target=TargetOut(kind=task.target_kind, value=task.target_value, labels=task.target_labels),
        resources=task.resources or {}, space=task.space_id,
        owner=task.owner, parent=task.parent_id, priority=task.priority, timeout=task.timeout,
        max_attempts=task.max_attempts, attempt=task.attempt, state=task.state,
        node=task.node_name, last_node=task.last_node,
        cancel_requested=task.cancel_requested, progress=task.progress, exit_code=task.exit_code,
        outputs=task.outputs, reason=task.reason or "", created_at=iso(task.created_at),
        assigned_at=iso(task.assigned_at), started_at=iso(task.started_at),
        finished_at=iso(task.finished_at), template=task.template_id, template_version=task.template_version,
        schedule=task.schedule_id)


def _with_node() -> peewee.ModelSelect:
    return Task.select(Task, Node).join(Node, peewee.JOIN.LEFT_OUTER)


def get_task(task_id: int) -> Task:
    task = _with_node().where(Task.id == task_id).first()
    if task is None:
        raise not_found("task", task_id)
    return task


@route("GET", "/task-types", summary="The task-type catalogue and each type's params schema", tag=TAG,
       responses={200: TaskTypeList})
def list_task_types(ctx: Context) -> list[TaskTypeOut]:
    require_user_or_root(ctx.principal)
    return [TaskTypeOut(name=n, params_schema=catalogue.schema(n)) for n in catalogue.names()]


@route("POST", "/tasks", summary="Submit a task (per node, per region, broadcast, or any node of a queue); "
                                 "needs a grant (GET /grants) unless root",
       tag=TAG, body=TaskCreate, responses={201: TaskDetail})
def create_task(ctx: Context) -> Reply:
    require_user_or_root(ctx.principal)
    created = submit.submit(ctx.body, principal=ctx.principal, settings=ctx.settings)
    return Reply(201, lambda: detail(get_task(created)), {"Location": f"/api/v1/tasks/{created}"})


def detail(task: Task) -> TaskDetail:
    children = [ChildOut(id=c.id, node=c.node_name or c.target_value, state=c.state)
                for c in _with_node().where(Task.parent == task.id).order_by(Task.id)] \
        if task.is_broadcast else []
    return TaskDetail(**_fields(task), **explain(task), children=children)


TASK_FILTERS = {
    "state": Query(str, None, "Task state", enum=TASK_STATES),
    "node": Query(str, None, "Tasks assigned to (or last run on) this node"),
    "name": Query(str, None, "Task type"),
    "queue": Query(str, None, "Queue"),
    "parent": Query(int, None, "Child runs of this broadcast", 1, None),
    "space": Query(int, None, "Space id", 1, None),
    "owner": Query(int, None, "Submitter's user id", 1, None),
    "template": Query(int, None, "Tasks launched from this template", 1, None),
    "schedule": Query(int, None, "Tasks this schedule launched", 1, None),
    "created_after": Query(str, None, "Submitted at or after this time (RFC 3339, e.g. 2026-11-30T09:00:00Z)"),
    "created_before": Query(str, None, "Submitted before this time (RFC 3339, e.g. 2026-11-30T09:00:00Z)"),
    "limit": Query(int, 50, "Page size", 1, 500),
    "offset": Query(int, 0, "Rows to skip", 0, None),
}


def _filtered(ctx: Context) -> peewee.ModelSelect:
    """The tasks the caller may see that match the query's filters: the list's and the counts'."""
    q = ctx.query
    query = _with_node()
    seen = visible_owned(ctx.principal, Task.owner, Task.space_id)
    if seen is not None:
        query = query.where(seen)
    if q.get("state"):
        query = query.where(Task.state == q["state"])
    if q["node"]:
        query = query.where((Node.name == q["node"]) | ((Task.node.is_null()) & (Task.last_node == q["node"])))
    for key, column in (("name", Task.name), ("queue", Task.queue), ("parent", Task.parent),
                        ("space", Task.space_id), ("owner", Task.owner), ("template", Task.template_id),
                        ("schedule", Task.schedule_id)):
        if q[key] is not None:
            query = query.where(column == q[key])
    if q["created_after"]:
        query = query.where(Task.created_at >= query_time("created_after", q["created_after"]))
    if q["created_before"]:
        query = query.where(Task.created_at < query_time("created_before", q["created_before"]))
    return query


@route("GET", "/tasks", summary="List tasks, newest first", tag=TAG, query=TASK_FILTERS,
       responses={200: Page[TaskOut]})
def list_tasks(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    q = ctx.query
    query = _filtered(ctx)
    total = query.count()
    rows = query.order_by(Task.id.desc()).limit(q["limit"]).offset(q["offset"])
    return {"items": [task_out(t) for t in rows], "total": total, "limit": q["limit"], "offset": q["offset"]}


class TaskCounts(BaseModel):
    total: int
    counts: dict[str, int] = Field(description="Every task state, with how many tasks are in it")


@route("GET", "/tasks/counts", summary="How many tasks are in each state (the list's filters, but state)",
       tag=TAG, query={k: v for k, v in TASK_FILTERS.items() if k not in ("state", "limit", "offset")},
       responses={200: TaskCounts})
def count_tasks(ctx: Context) -> TaskCounts:
    require_user_or_root(ctx.principal)
    rows = _filtered(ctx).select(Task.state, peewee.fn.COUNT(Task.id)).group_by(Task.state).tuples()
    counts = dict.fromkeys(TASK_STATES, 0)
    counts.update({state: n for state, n in rows})
    return TaskCounts(total=sum(counts.values()), counts=counts)


@route("GET", "/tasks/{id}", summary="Show a task; a queued one says why it is not starting", tag=TAG,
       responses={200: TaskDetail})
def show_task(ctx: Context, id: int) -> TaskDetail:
    task = get_task(id)
    see_owned(ctx.principal, task.owner, task.space_id, "task")
    return detail(task)


@route("GET", "/tasks/{id}/events", summary="A task's state changes, oldest first", tag=TAG,
       responses={200: EventList})
def task_events(ctx: Context, id: int) -> list[EventOut]:
    task = get_task(id)
    see_owned(ctx.principal, task.owner, task.space_id, "task")
    return [EventOut(ts=iso(e.ts), from_state=e.from_state, to_state=e.to_state, reason=e.reason, data=e.data)
            for e in TaskEvent.select().where(TaskEvent.task == id).order_by(TaskEvent.id)]


@route("GET", "/tasks/{id}/log", summary="A task's output from a character offset; grows while it runs",
       tag=TAG, query={"offset": Query(int, 0, "Character offset to read from", 0, None)},
       responses={200: LogOut})
def task_log(ctx: Context, id: int) -> LogOut:
    task = get_task(id)
    see_owned(ctx.principal, task.owner, task.space_id, "task")
    offset = ctx.query["offset"]
    first = (TaskLog.select(TaskLog.start).where(TaskLog.task == id, TaskLog.start <= offset)
             .order_by(TaskLog.start.desc()).first())
    base = first.start if first is not None else 0
    parts: list[str] = []
    size = 0
    end = base
    for chunk in TaskLog.select().where(TaskLog.task == id, TaskLog.start >= base).order_by(TaskLog.seq):
        parts.append(chunk.text)
        size += len(chunk.text)
        end = chunk.start + len(chunk.text)
        if size >= MAX_LOG_READ + (offset - base):
            break
    text = "".join(parts)[max(offset - base, 0):][:MAX_LOG_READ]
    last = TaskLog.select(TaskLog.start, TaskLog.text).where(TaskLog.task == id).order_by(TaskLog.seq.desc()).first()
    total = last.start + len(last.text) if last is not None else 0
    next_offset = offset + len(text) if offset <= end else offset
    return LogOut(offset=offset, next_offset=next_offset, text=text,
                  complete=task.state in TERMINAL and next_offset >= total)


@route("POST", "/tasks/{id}/cancel",
       summary="Cancel a task: a queued one at once, a running one is killed on its node "
               "(a broadcast: every child still going)", tag=TAG, responses={200: TaskDetail})
def cancel_task(ctx: Context, id: int) -> TaskDetail:
    states.lock_task(id)
    task = get_task(id)
    cancel_owned(ctx.principal, task.owner, task.space_id, "task")
    if not states.cancel(id, ctx.principal.describe()):
        raise conflict(f"task {id} has already ended ({task.state})")
    return detail(get_task(id))


@route("POST", "/tasks/{id}/callback",
       summary="A node reports on a task it runs (signed by the node): started, progress, log, finished",
       tag=TAG, body=Callback, auth="node", responses={200: CallbackOut})
def task_callback(ctx: Context, id: int) -> CallbackOut:
    return callbacks.report(id, ctx.principal.node, ctx.body, ctx.settings.task_lease, ctx.settings.task_log_max)

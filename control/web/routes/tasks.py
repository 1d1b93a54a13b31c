"""Tasks: submit, list, explain, follow (events, log), cancel, and the nodes' signed callbacks.

A task names a type from the catalogue (``playbooks/tasks/<name>.yml``) and params
checked against the type's schema. ``target`` pins it to a node, or broadcasts it to
every node of a region or of the farm: a broadcast is a parent task plus one child
per matching node, each child visible and cancellable on its own, the parent's state
summarising its children. Users see the tasks they submitted and those of the spaces
they belong to; only the submitter or the administrator cancels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import peewee

from control.core.errors import conflict, forbidden, invalid, not_found
from control.core.models import iso, now
from control.core.schemas import Page
from control.farm import catalogue, policy, states
from control.farm.explain import explain
from control.farm.models import ACTIVE, TASK_STATES, TERMINAL, Node, Task, TaskEvent, TaskLog
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
from control.registry import membership
from control.registry.identity import Principal, require_user_or_root
from control.web.routing import Context, Query, Reply, route

TAG = "tasks"
MAX_LOG_READ = 1024 * 1024


def task_out(task: Task) -> TaskOut:
    return TaskOut(**_fields(task))


def _fields(task: Task) -> dict[str, Any]:
    node = task.node if task.node_id is not None else None
    return dict(
        id=task.id, name=task.name, params=task.params or {}, queue=task.queue,
        target=TargetOut(kind=task.target_kind, value=task.target_value), space=task.space_id,
        owner=task.owner, parent=task.parent_id, priority=task.priority, timeout=task.timeout,
        max_attempts=task.max_attempts, attempt=task.attempt, state=task.state,
        node=node.name if node is not None else None, last_node=task.last_node,
        cancel_requested=task.cancel_requested, progress=task.progress, exit_code=task.exit_code,
        outputs=task.outputs, reason=task.reason or "", created_at=iso(task.created_at),
        assigned_at=iso(task.assigned_at), started_at=iso(task.started_at),
        finished_at=iso(task.finished_at))


def _with_node() -> peewee.ModelSelect:
    return Task.select(Task, Node).join(Node, peewee.JOIN.LEFT_OUTER)


def get_task(task_id: int) -> Task:
    task = _with_node().where(Task.id == task_id).first()
    if task is None:
        raise not_found("task", task_id)
    return task


def _can_see(principal: Principal, task: Task) -> None:
    require_user_or_root(principal)
    if principal.is_root:
        return
    uid = principal.user.id
    if task.owner == uid:
        return
    if task.space_id is not None and membership.space_role(uid, task.space_id) is not None:
        return
    raise forbidden("only the submitter, members of the task's space and the administrator may see it")


def _can_cancel(principal: Principal, task: Task) -> None:
    _can_see(principal, task)
    if not principal.is_root and task.owner != principal.user.id:
        raise forbidden("only the submitter or the administrator may cancel a task")


def _broadcast_nodes(kind: str, value: str | None, queue: str | None) -> list[Node]:
    query = Node.select().where(Node.state == "online", Node.cordoned == False)  # noqa: E712
    if kind == "region":
        query = query.where(Node.region == value)
    nodes = list(query.order_by(Node.name))
    if queue is not None:
        nodes = [n for n in nodes if queue in (n.queues or [])]
    return nodes


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
    req: TaskCreate = ctx.body
    try:
        problems = catalogue.validate(req.name, req.params)
    except catalogue.UnknownTaskType:
        known = ", ".join(catalogue.names()) or "none"
        raise invalid(f"name: unknown task type {req.name!r} (known: {known})") from None
    if problems:
        raise invalid("; ".join(problems))
    image = catalogue.image_problem(req.name, req.params, ctx.settings.container_image_patterns)
    if image is not None:
        raise invalid(image)
    if req.space is None and catalogue.needs_space(req.name):
        raise invalid(f"space: task type {req.name!r} uploads its outputs to a space's storage; give a space")
    kind, value = "any", None
    if req.target is not None:
        if req.target.node:
            kind, value = "node", req.target.node
        elif req.target.region:
            kind, value = "region", req.target.region
        else:
            kind = "all"
    sub = policy.Submission(task_type=req.name, queue=req.queue, target_kind=kind, target_value=value,
                            space=req.space)
    nodes: list[Node] = []
    if kind in ("region", "all"):
        nodes = _broadcast_nodes(kind, value, req.queue)
        if not nodes:
            where = f"in region {value!r}" if kind == "region" else "in the farm"
            serving = f" serving queue {req.queue!r}" if req.queue else ""
            raise invalid(f"target: no online, uncordoned node{serving} {where}")
        sub = dataclasses.replace(sub, count=len(nodes))
    policy.check_submission(ctx.principal, ctx.settings, sub)
    owner = ctx.principal.user.id if ctx.principal.user is not None else None
    common = dict(name=req.name, params=req.params, queue=req.queue or "default", space_id=req.space,
                  owner=owner, priority=req.priority, timeout=req.timeout, max_attempts=req.max_attempts)
    who = ctx.principal.describe()
    t = now()
    if kind in ("region", "all"):
        parent = Task.create(**common, target_kind=kind, target_value=value, created_at=t)
        TaskEvent.create(task=parent, ts=t, to_state="queued",
                         reason=f"submitted by {who}: broadcast to {len(nodes)} node(s)",
                         data={"nodes": [n.name for n in nodes]})
        for node in nodes:
            child = Task.create(**common, parent=parent, target_kind="node", target_value=node.name,
                                created_at=t)
            TaskEvent.create(task=child, ts=t, to_state="queued",
                             reason=f"submitted by {who}: child of broadcast {parent.id}")
        task = parent
    else:
        task = Task.create(**common, target_kind=kind, target_value=value, created_at=t)
        TaskEvent.create(task=task, ts=t, to_state="queued", reason=f"submitted by {who}")
    created = task.id
    return Reply(201, lambda: detail(get_task(created)), {"Location": f"/api/v1/tasks/{created}"})


def detail(task: Task) -> TaskDetail:
    children = [ChildOut(id=c.id, node=c.node.name if c.node_id is not None else c.target_value,
                         state=c.state)
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
    "limit": Query(int, 50, "Page size", 1, 500),
    "offset": Query(int, 0, "Rows to skip", 0, None),
}


@route("GET", "/tasks", summary="List tasks, newest first", tag=TAG, query=TASK_FILTERS,
       responses={200: Page[TaskOut]})
def list_tasks(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    q = ctx.query
    query = _with_node()
    if not ctx.principal.is_root:
        uid = ctx.principal.user.id
        spaces = list(membership.user_spaces(uid))
        query = query.where((Task.owner == uid) | Task.space_id.in_(spaces or [0]))
    if q["state"]:
        query = query.where(Task.state == q["state"])
    if q["node"]:
        query = query.where((Node.name == q["node"]) | ((Task.node.is_null()) & (Task.last_node == q["node"])))
    for key, column in (("name", Task.name), ("queue", Task.queue), ("parent", Task.parent),
                        ("space", Task.space_id)):
        if q[key] is not None:
            query = query.where(column == q[key])
    total = query.count()
    rows = query.order_by(Task.id.desc()).limit(q["limit"]).offset(q["offset"])
    return {"items": [task_out(t) for t in rows], "total": total, "limit": q["limit"], "offset": q["offset"]}


@route("GET", "/tasks/{id}", summary="Show a task; a queued one says why it is not starting", tag=TAG,
       responses={200: TaskDetail})
def show_task(ctx: Context, id: int) -> TaskDetail:
    task = get_task(id)
    _can_see(ctx.principal, task)
    return detail(task)


@route("GET", "/tasks/{id}/events", summary="A task's state changes, oldest first", tag=TAG,
       responses={200: EventList})
def task_events(ctx: Context, id: int) -> list[EventOut]:
    task = get_task(id)
    _can_see(ctx.principal, task)
    return [EventOut(ts=iso(e.ts), from_state=e.from_state, to_state=e.to_state, reason=e.reason, data=e.data)
            for e in TaskEvent.select().where(TaskEvent.task == id).order_by(TaskEvent.id)]


@route("GET", "/tasks/{id}/log", summary="A task's output from a character offset; grows while it runs",
       tag=TAG, query={"offset": Query(int, 0, "Character offset to read from", 0, None)},
       responses={200: LogOut})
def task_log(ctx: Context, id: int) -> LogOut:
    task = get_task(id)
    _can_see(ctx.principal, task)
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


def _cancel_one(task: Task, who: str) -> bool:
    """Cancel a queued or lost task now; flag an active one for the reaper to kill."""
    if task.state in ("queued", "lost"):
        return states.transition(task.id, "cancelled", f"cancelled by {who}", expect=("queued", "lost"))
    if task.state in ACTIVE:
        changed = (Task.update(cancel_requested=True)
                   .where(Task.id == task.id, Task.state.in_(ACTIVE), Task.cancel_requested == False)  # noqa: E712
                   .execute())
        if changed:
            states.record(task.id, task.state, f"cancel requested by {who}", {"cancel_requested": True})
        return True
    return False


@route("POST", "/tasks/{id}/cancel",
       summary="Cancel a task: a queued one at once, a running one is killed on its node "
               "(a broadcast: every child still going)", tag=TAG, responses={200: TaskDetail})
def cancel_task(ctx: Context, id: int) -> TaskDetail:
    states.lock_task(id)
    task = get_task(id)
    _can_cancel(ctx.principal, task)
    who = ctx.principal.describe()
    if task.is_broadcast:
        children = list(Task.select().where(Task.parent == id, Task.state.not_in(TERMINAL)).order_by(Task.id))
        if not children:
            raise conflict(f"task {id} has already ended ({task.state})")
        for child in children:
            _cancel_one(child, who)
        states.summarise(id)
    elif task.state in TERMINAL:
        raise conflict(f"task {id} has already ended ({task.state})")
    else:
        _cancel_one(task, who)
    return detail(get_task(id))


def _final_state(task: Task, body: Callback) -> tuple[str, str]:
    if body.reason is not None:
        return body.reason, f"{body.reason.replace('_', ' ')}: killed on node {task.node.name}"
    if body.exit_code == 0:
        return "succeeded", f"exit code 0 on node {task.node.name}"
    if task.cancel_requested:
        return "cancelled", f"cancelled: exit code {body.exit_code} on node {task.node.name}"
    return "failed", f"exit code {body.exit_code} on node {task.node.name}"


def _log_end(task_id: int) -> tuple[int, int]:
    """The next chunk's ``seq`` and the log's length in characters (over every attempt)."""
    last = (TaskLog.select(TaskLog.seq, TaskLog.start, TaskLog.text).where(TaskLog.task == task_id)
            .order_by(TaskLog.seq.desc()).first())
    return (last.seq + 1, last.start + len(last.text)) if last is not None else (1, 0)


def _attempt_log_start(task_id: int, attempt: int) -> int | None:
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


def _append_log(task_id: int, attempt: int, text: str, offset: int | None) -> None:
    """Store a chunk once: a retried one (its answer was lost) is skipped, or only its new tail kept.

    ``offset`` is where the runner put the chunk in this attempt's output; without it (an
    older runner) the chunk is appended as it comes.
    """
    seq, end = _log_end(task_id)
    start = _attempt_log_start(task_id, attempt) if offset is not None else None
    if offset is not None and start is not None:
        held = end - start
        if offset + len(text) <= held:
            return
        if offset < held:
            text = text[held - offset:]
    TaskLog.create(task=task_id, seq=seq, start=end, text=text)


@route("POST", "/tasks/{id}/callback",
       summary="A node reports on a task it runs (signed by the node): started, progress, log, finished",
       tag=TAG, body=Callback, auth="node", responses={200: CallbackOut})
def task_callback(ctx: Context, id: int) -> CallbackOut:
    body: Callback = ctx.body
    states.lock_task(id)
    task = get_task(id)
    if task.node_id is None or task.node.name != ctx.principal.node:
        raise forbidden(f"task {id} is not assigned to node {ctx.principal.node}")
    if body.attempt != task.attempt:
        raise forbidden(f"attempt {body.attempt} of task {id} is stale; the current attempt is {task.attempt}")
    lease = ctx.settings.task_lease
    if task.state in TERMINAL:  # a repeated or late report: change nothing
        return CallbackOut(cancel=task.state in ("cancelled", "timed_out"), state=task.state, lease=lease)
    if task.state not in ACTIVE:
        raise forbidden(f"task {id} is {task.state}, not running on node {ctx.principal.node}")
    lease_at = now() + lease
    node = task.node.name
    if task.state == "assigned":
        # Any report means the attempt started; a task that ended within the runner's start
        # grace reports only "finished", and still gets its running event first.
        how = "started" if body.event != "finished" else "started (reported with its end)"
        states.transition(id, "running", f"{how} on node {node}", expect=("assigned",),
                          event_data={"node": node, "attempt": task.attempt, "log_start": _log_end(id)[1]},
                          lease_expires_at=lease_at)
    if body.event == "finished":
        final, reason = _final_state(task, body)
        extra: dict[str, Any] = {"exit_code": body.exit_code, "outputs": body.outputs}
        if final == "succeeded":
            extra["progress"] = 100.0
        states.transition(id, final, reason, expect=ACTIVE, event_data={"node": node, "attempt": task.attempt},
                          **extra)
    else:
        values: dict[Any, Any] = {Task.lease_expires_at: lease_at}
        if body.percent is not None:
            values[Task.progress] = body.percent
        Task.update(values).where(Task.id == id, Task.state.in_(ACTIVE), Task.attempt == task.attempt).execute()
        if body.event == "log" and body.data:
            _append_log(id, task.attempt, body.data, body.offset)
    current = Task.select(Task.state, Task.cancel_requested).where(Task.id == id).first()
    return CallbackOut(cancel=bool(current.cancel_requested) or current.state in ("cancelled", "timed_out"),
                       state=current.state, lease=lease)

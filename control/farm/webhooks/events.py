"""Events and who receives them: one outbox row per receiving webhook, in the caller's transaction.

Called where the change is written (``control.farm.states`` for task states, the reaper
for lost nodes, the scheduler for a schedule that failed to fire), inside that change's
transaction: the event is recorded exactly when the change commits, and a rolled-back
change announces nothing. Sending is someone else's job (``delivery``), so no state
change ever waits for a receiver.

Who receives an event is two rules, both needed:

* the webhook's **scope**: ``own`` (tasks its owner submitted), ``space`` (tasks of that
  space), ``template`` (tasks launched from that template), ``all`` (the administrator's:
  everything);
* **visibility**, for users' webhooks: the owner must be allowed to see the task now
  (``control.registry.access.may_see_owned``: its submitter, or a member of its space). A
  user who leaves a space stops receiving its tasks' events.

``node.lost`` carries no task: nodes are visible to every user (``GET /nodes``), so every
webhook that subscribes to it receives it, whatever its scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from control.core.db import database
from control.core.models import iso, now
from control.farm.models import Node, Task
from control.farm.webhooks.models import TASK_EVENTS, Webhook, WebhookDelivery
from control.registry.access import may_see_owned


@dataclass(frozen=True)
class Subject:
    """What an event is about, as far as who may receive it goes."""

    owner: int | None  # the user who submitted it (None: the administrator)
    space: int | None
    template: int | None = None


def _in_scope(hook: Webhook, subject: Subject) -> bool:
    if hook.scope == "all":
        return True
    if hook.scope == "own":
        return subject.owner == hook.owner_id
    if hook.scope == "space":
        return subject.space is not None and subject.space == hook.scope_id
    if hook.scope == "template":
        return subject.template is not None and subject.template == hook.scope_id
    return False


_PROBES: dict[type, tuple[str, list[Any]]] = {}


def _probe() -> tuple[str, list[Any]]:
    """The listeners' query as SQL, rendered by peewee once per kind of database."""
    kind = type(database.obj)
    if kind not in _PROBES:
        _PROBES[kind] = (Webhook.select(Webhook.id, Webhook.owner, Webhook.events, Webhook.scope, Webhook.scope_id)
                         .where(Webhook.enabled == True).order_by(Webhook.id)).sql()  # noqa: E712
    return _PROBES[kind]


def listeners(event: str) -> list[Webhook]:
    """The enabled webhooks subscribed to ``event``: the first thing every event costs, and all
    a terminal task state costs when no webhook listens.

    Rendered once: peewee took 0.27 ms to build this query and SQLite 0.01 ms to answer it,
    and every task that ends pays for it inside its write transaction.
    """
    out = []
    for ident, owner, events, scope, scope_id in database.execute_sql(*_probe()).fetchall():
        subscribed = Webhook.events.python_value(events) or []
        if event in subscribed:
            out.append(Webhook(id=ident, owner=owner, events=subscribed, scope=scope, scope_id=scope_id))
    return out


def receivers(hooks: list[Webhook], subject: Subject | None) -> list[Webhook]:
    """Those of ``hooks`` that may receive an event about ``subject``: in scope, and visible to the owner."""
    if subject is None:
        return hooks
    return [hook for hook in hooks
            if _in_scope(hook, subject) and may_see_owned(hook.owner_id, subject.owner, subject.space)]


def enqueue(event: str, subject: Subject | None, payload: dict[str, Any],
            hooks: list[Webhook] | None = None) -> int:
    """One pending delivery per receiving webhook; how many. Call inside the change's transaction.

    ``hooks``: the event's listeners when the caller has read them already.
    """
    hooks = receivers(listeners(event) if hooks is None else hooks, subject)
    if hooks:
        t = now()
        WebhookDelivery.insert_many([
            {"webhook": h.id, "event": event, "payload": payload, "status": "pending", "created_at": t,
             "next_attempt_at": t} for h in hooks]).execute()
    return len(hooks)


def task_template(task: Task) -> int | None:
    """The template a task was launched from, when tasks record one (templates, issue 14)."""
    value = getattr(task, "template_id", None)
    return value if isinstance(value, int) else None


def _task_columns() -> list[Any]:
    """The columns a task event needs (the whole row would cost more to build than to read)."""
    cols = [Task.id, Task.name, Task.state, Task.reason, Task.exit_code, Task.queue, Task.owner, Task.space_id,
            Task.node, Task.last_node, Task.attempt, Task.max_attempts, Task.created_at, Task.started_at,
            Task.finished_at]
    template = Task._meta.fields.get("template_id")
    return [*cols, template] if template is not None else cols


def task_payload(task: Task) -> dict[str, Any]:
    """What a task event says about its task: enough to act on, no params or outputs."""
    node = Node.select(Node.name).where(Node.id == task.node_id).scalar() if task.node_id else None
    return {"task": {
        "id": task.id, "name": task.name, "state": task.state, "reason": task.reason or "",
        "exit_code": task.exit_code, "queue": task.queue, "owner": task.owner, "space": task.space_id,
        "template": task_template(task), "node": node, "last_node": task.last_node, "attempt": task.attempt,
        "max_attempts": task.max_attempts, "created_at": iso(task.created_at), "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at), "url": f"/api/v1/tasks/{task.id}"}}


def task_ended(task_id: int, state: str) -> int:
    """A task reached a terminal state (``succeeded``, ``failed``, ``timed_out``, ``cancelled``)."""
    event = f"task.{state}"
    hooks = listeners(event) if event in TASK_EVENTS else []
    if not hooks:
        return 0
    task = Task.select(*_task_columns()).where(Task.id == task_id).first()
    if task is None:
        return 0
    return enqueue(event, Subject(task.owner, task.space_id, task_template(task)), task_payload(task), hooks)


def node_lost(name: str, reason: str) -> int:
    """A node went silent and was marked lost (its tasks are requeued or failed separately)."""
    hooks = listeners("node.lost")
    node = Node.get_or_none(Node.name == name) if hooks else None
    if node is None:
        return 0
    return enqueue("node.lost", None, hooks=hooks, payload={"node": {
        "name": node.name, "region": node.region, "state": node.state, "last_seen": iso(node.last_seen),
        "reason": reason, "url": f"/api/v1/nodes/{node.name}"}})


def schedule_failed(schedule_id: int, template_id: int | None, owner: int | None, space: int | None,
                    reason: str) -> int:
    """A schedule could not fire (its template is gone, the launch was refused...).

    For the scheduler to call in the transaction that records the failure.
    """
    hooks = listeners("schedule.failed")
    if not hooks:
        return 0
    return enqueue("schedule.failed", Subject(owner, space, template_id), {"schedule": {
        "id": schedule_id, "template": template_id, "owner": owner, "space": space, "reason": reason,
        "url": f"/api/v1/schedules/{schedule_id}"}}, hooks)

"""A task's uploaded outputs, recorded one by one as their uploads land (Zimfarm's file events).

The node's upload step (``control.node.tasktypes.pipeline``) reports each file once it is
renamed to its final name on the provider, with a signed request
(``POST /tasks/{id}/files``): its name in the task directory, size and SHA-256. Where it went
is the zone's own record, not the node's word: the provider is the one the dispatcher chose
for the task (``TaskUpload``), the path is ``task-<id>/<name>`` in the task's space. A retried
attempt that uploads the same name again replaces the row.
"""

from __future__ import annotations

import posixpath

import peewee

from control.core.errors import conflict, forbidden, invalid
from control.core.models import now
from control.farm.callbacks import node_task
from control.farm.models import ACTIVE, TaskFile, TaskUpload
from control.registry.models import Provider


def space_path(task_id: int, name: str) -> str:
    """Where the file is in its space; the name must stay inside the task's directory."""
    own = f"task-{int(task_id)}/"
    target = posixpath.normpath(posixpath.join(own, name))
    if name.startswith("/") or not target.startswith(own) or target == own.rstrip("/"):
        raise invalid(f"name: {name!r} is not a path inside the task's directory")
    return target


def record(task_id: int, node_name: str, attempt: int, name: str, size: int, sha256: str) -> TaskFile:
    """The node running the task's current attempt says one output landed."""
    task = node_task(task_id, node_name)
    if attempt != task.attempt or task.state not in ACTIVE:
        raise forbidden(f"attempt {attempt} of task {task_id} is not the one running (attempt {task.attempt}, "
                        f"{task.state})")
    chosen = TaskUpload.get_or_none(TaskUpload.task == task_id)
    if chosen is None or task.space_id is None:
        raise conflict(f"task {task_id} has no upload target: nothing to record")
    provider = Provider.get_or_none(Provider.id == chosen.provider_id)
    if provider is None:
        raise conflict(f"provider {chosen.provider_id}, task {task_id}'s upload target, is gone")
    path = space_path(task_id, name)
    values = {"attempt": attempt, "size": size, "sha256": sha256, "provider_id": provider.id,
              "provider_name": provider.name, "space_id": task.space_id, "path": path, "created_at": now()}
    row = TaskFile.get_or_none(TaskFile.task == task_id, TaskFile.name == name)
    if row is None:
        return TaskFile.create(task=task_id, name=name, **values)
    for k, v in values.items():
        setattr(row, k, v)
    row.save()
    return row


def of_task(task_id: int) -> peewee.ModelSelect:
    return TaskFile.select().where(TaskFile.task == task_id)

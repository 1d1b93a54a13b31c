"""Transfers between providers: replicate, migrate and evict a path of a space, as farm tasks.

A transfer names a space, a path in it (a file or a directory; "" is the whole space), a
source and a target provider, both supporting the space with SFTP storage (each provider's
consent is its support, recorded when it redeemed the space's support token), and a kind:

* ``replicate``: copy the path from the source to the target;
* ``migrate``: copy, then remove it from the source;
* ``evict``: remove it from the source, only where the target holds the same bytes (size and
  SHA-256, checked file by file before anything is removed): the last replica is never evicted.

It runs as a farm task of type ``transfer`` in the ``transfer`` queue, so provider hosts
registered as nodes serving that queue run it, with the dispatcher's leases, retries and
cancels. The dispatcher gives the task its two endpoints (``plan``, the batch entry's
``upload``); the node's program (``control.node.tasktypes.transfer``) copies provider to
provider over SFTP with the node's upload key, checks every file by size and SHA-256 on the
target, and reports its byte and file counters with signed requests (``progress``).

A transfer's state is its task's: ``scheduled`` (no task yet), ``enqueued`` (queued or lost),
``active`` (assigned, running), then ``completed``, ``failed`` (failed, timed out) or
``cancelled``. Cancel cancels the task; rerun, once it ended, makes a new one.
"""

from __future__ import annotations

import posixpath
from typing import Any

import peewee

from control.core.errors import ApiError, conflict, forbidden, invalid, not_found
from control.core.models import now
from control.farm import states
from control.farm.callbacks import node_task
from control.farm.models import ACTIVE, Task, Transfer
from control.registry import feed
from control.registry.identity import Principal
from control.registry.models import Provider, Space, Support

TASK_TYPE = "transfer"
QUEUE = "transfer"
MAX_ATTEMPTS = 3
TIMEOUT = 24 * 3600
_STATE = {"queued": "enqueued", "lost": "enqueued", "assigned": "active", "running": "active",
          "succeeded": "completed", "failed": "failed", "timed_out": "failed", "cancelled": "cancelled"}


def state_of(task_state: str | None) -> str:
    return "scheduled" if task_state is None else _STATE.get(task_state, "failed")


def clean_path(path: str) -> str:
    """The path in the space, normalised; one leaving the space (absolute, "..") is a 422."""
    if "\x00" in path or path.startswith("/"):
        raise invalid(f"path: {path[:200]!r} must be relative to the space")
    norm = posixpath.normpath(path) if path else "."
    if norm == ".." or norm.startswith("../"):
        raise invalid(f"path: {path[:200]!r} leaves the space")
    return "" if norm == "." else norm


def storage(space_id: int, provider_id: int, role: str) -> Support:
    """The provider's support of the space, with SFTP storage; 422 naming ``role`` otherwise."""
    row = (Support.select(Support, Provider).join(Provider)
           .where(Support.space == space_id, Support.provider == provider_id).first())
    if row is None:
        raise invalid(f"{role}: provider {provider_id} does not support space {space_id}")
    if not row.provider.sftp_host or not row.provider.storage_path:
        raise invalid(f"{role}: provider {row.provider.name} declared no SFTP storage")
    return row


def distinct(source: Support, target: Support) -> None:
    """Two registrations of one storage would make an evict find its own file as "the other
    replica" and remove the only one: the two must be different SFTP servers or directories."""
    def where(s: Support) -> tuple[str, int, str]:
        return (s.provider.sftp_host, s.provider.sftp_port or 22, s.provider.storage_path.rstrip("/"))

    if where(source) == where(target):
        raise invalid(f"target: providers {source.provider.name} and {target.provider.name} declare the same "
                      "storage (SFTP host, port and storage path)")


def check_room(target: Support) -> None:
    """A transfer into a provider without room is refused before anything is copied."""
    free = target.size - (target.used or 0)
    if target.over_quota or free <= 0:
        raise conflict(f"target: provider {target.provider.name} has no room for space {target.space_id}: "
                       f"size {target.size} bytes, used {target.used or 0}"
                       + (" (over quota)" if target.over_quota else ""))


def _enqueue(t: Transfer, why: str) -> Task:
    return states.enqueue({"name": TASK_TYPE, "params": {"transfer": t.id}, "queue": QUEUE, "space_id": t.space_id,
                           "owner": t.owner, "max_attempts": MAX_ATTEMPTS, "timeout": TIMEOUT, "limits": {}},
                          why, {"transfer": t.id})


def create(principal: Principal, space_id: int, path: str, kind: str, source_id: int, target_id: int) -> Transfer:
    """Record the transfer and enqueue its task (the caller checked the role: ``access.schedule_transfer``)."""
    path = clean_path(path)
    if source_id == target_id:
        raise invalid("target: must differ from source")
    source = storage(space_id, source_id, "source")
    target = storage(space_id, target_id, "target")
    distinct(source, target)
    if kind != "evict":
        check_room(target)
    owner = principal.user.id if principal.user is not None else None
    t = Transfer.create(space_id=space_id, path=path, kind=kind, source_id=source_id, target_id=target_id,
                        owner=owner)
    task = _enqueue(t, f"transfer {t.id}: {kind} {path or '(the whole space)'} from provider {source_id} to "
                       f"provider {target_id}, asked by {principal.describe()}")
    Transfer.update(task=task.id).where(Transfer.id == t.id).execute()
    _feed(t, "create")
    return Transfer.get_by_id(t.id)


def _feed(t: Transfer, action: str) -> None:
    """A change for the space's members and the audit log: created, then each cancel and rerun (updates)."""
    feed.record("transfer", t.id, "create" if action == "create" else "update",
                {"action": action, "kind": t.kind, "path": t.path, "source": t.source_id, "target": t.target_id},
                space_id=t.space_id)


def get(transfer_id: int) -> Transfer:
    row = Transfer.get_or_none(Transfer.id == transfer_id)
    if row is None:
        raise not_found("transfer", transfer_id)
    return row


def task_state(t: Transfer) -> str | None:
    return Task.select(Task.state).where(Task.id == t.task_id).scalar() if t.task_id else None


def cancel(t: Transfer, who: str) -> None:
    if t.task_id is None or not states.cancel(t.task_id, who):
        raise conflict(f"transfer {t.id} has ended: nothing to cancel")
    _feed(t, "cancel")


def rerun(t: Transfer, principal: Principal) -> Transfer:
    """A transfer that ended runs again as a new task, counters from zero."""
    if state_of(task_state(t)) not in ("completed", "failed", "cancelled"):
        raise conflict(f"transfer {t.id} has not ended: cancel it first")
    storage(t.space_id, t.source_id, "source")
    target = storage(t.space_id, t.target_id, "target")
    if t.kind != "evict":
        check_room(target)
    task = _enqueue(t, f"transfer {t.id}: run {t.runs + 1}, asked by {principal.describe()}")
    Transfer.update(task=task.id, runs=t.runs + 1, bytes_done=0, files_done=0, bytes_total=None, files_total=None,
                    updated_at=now()).where(Transfer.id == t.id).execute()
    _feed(t, "rerun")
    return get(t.id)


def progress(transfer_id: int, node_name: str, attempt: int, counters: dict[str, int]) -> Transfer:
    """The node running the transfer's current task attempt reports its counters."""
    t = get(transfer_id)
    if t.task_id is None:
        raise conflict(f"transfer {t.id} has no task")
    task = node_task(t.task_id, node_name)
    if attempt != task.attempt or task.state not in ACTIVE:
        raise forbidden(f"attempt {attempt} of transfer {t.id}'s task is not the one running")
    Transfer.update(**counters, updated_at=now()).where(Transfer.id == t.id).execute()
    return get(t.id)


def visible(spaces: set[int] | None) -> peewee.ModelSelect:
    query = Transfer.select()
    return query if spaces is None else query.where(Transfer.space_id.in_(sorted(spaces)))


def _endpoint(s: Support) -> dict[str, Any]:
    p = s.provider
    return {"provider": p.name, "provider_id": p.id, "sftp_host": p.sftp_host, "sftp_port": p.sftp_port or 22,
            "sftp_user": p.sftp_user or "", "size": s.size, "used": s.used or 0}


def plan(tasks: list[Task]) -> tuple[list[Task], dict[int, dict[str, Any]]]:
    """For a round's claimed transfer tasks: each one's endpoints (the batch entry's ``upload``).

    A transfer task whose transfer is gone, or whose providers no longer support the space,
    fails here, before it runs.
    """
    kept: list[Task] = []
    chosen: dict[int, dict[str, Any]] = {}
    for task in tasks:
        if task.name != TASK_TYPE:
            kept.append(task)
            continue
        t = Transfer.get_or_none(Transfer.task == task.id)
        try:
            if t is None:
                raise invalid(f"task {task.id} runs no transfer")
            source = storage(t.space_id, t.source_id, "source")
            target = storage(t.space_id, t.target_id, "target")
        except ApiError as exc:
            states.transition(task.id, "failed", exc.message, expect=("assigned",))
            continue
        space = Space.get_or_none(Space.id == t.space_id)
        chosen[task.id] = {"transfer": t.id, "kind": t.kind, "space_id": t.space_id, "path": t.path,
                           "space": space.name if space else str(t.space_id),
                           "source": _endpoint(source), "target": _endpoint(target)}
        kept.append(task)
    return kept, chosen

"""Where a task's outputs go: the choice among the providers supporting its space.

The dispatcher calls :func:`plan` for the tasks it has claimed, before their job starts. A
provider can take uploads when it declared SFTP and storage; it has room when its last
measured use of the space is below the support's size and its agent has not marked the
space over quota (``control.registry.usage``; a space never measured counts as empty).
Among those with room the pick is, in this order (``sort_key``):

1. a provider in the worker's region (the node's ``region`` equals the provider's);
2. the most free space (size minus used);
3. the fewest active tasks (assigned or running) already uploading to it;
4. the lowest id, so the choice is stable.

A task may name its provider (the pipeline's ``provider`` param, a provider name): then only
that one is considered. When none has room the task fails before it runs a single stage,
with the reason; otherwise the choice and why (every candidate's numbers) is an event of the
task, and the upload step checks the room again against the real output sizes before it
sends a byte (``control.node.tasktypes.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee

from control.core.db import write_transaction
from control.core.models import now
from control.farm import states
from control.farm.catalogue import needs_space
from control.farm.models import Task, TaskUpload
from control.registry.models import Provider, Space, Support

ACTIVE = ("assigned", "running")


class NoRoom(Exception):
    """No provider may take this task's outputs; the message is the task's reason."""


@dataclass(frozen=True)
class Candidate:
    provider_id: int
    name: str
    region: str | None
    size: int
    used: int | None
    over_quota: bool
    load: int
    sftp_host: str
    sftp_port: int
    sftp_user: str
    storage_path: str

    @property
    def free(self) -> int:
        return self.size - (self.used or 0)

    @property
    def has_room(self) -> bool:
        return not self.over_quota and self.free > 0

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "provider_id": self.provider_id, "region": self.region,
                "size": self.size, "used": self.used, "free": self.free, "over_quota": self.over_quota,
                "load": self.load}


def loads() -> dict[int, int]:
    """Active tasks uploading to each provider (one GROUP BY per dispatch round)."""
    rows = (TaskUpload.select(TaskUpload.provider_id, peewee.fn.COUNT(TaskUpload.id))
            .join(Task).where(Task.state.in_(ACTIVE)).group_by(TaskUpload.provider_id).tuples())
    return dict(rows)


def candidates(space_id: int, load: dict[int, int]) -> list[Candidate]:
    """The providers supporting the space that take uploads (SFTP host and storage declared)."""
    rows = (Support.select(Support, Provider).join(Provider)
            .where(Support.space == space_id, Provider.sftp_host.is_null(False),
                   Provider.storage_path.is_null(False)))
    return [Candidate(provider_id=s.provider_id, name=s.provider.name, region=s.provider.region, size=s.size,
                      used=s.used, over_quota=s.over_quota, load=load.get(s.provider_id, 0),
                      sftp_host=s.provider.sftp_host, sftp_port=s.provider.sftp_port or 22,
                      sftp_user=s.provider.sftp_user or "", storage_path=s.provider.storage_path)
            for s in rows]


def sort_key(region: str | None, c: Candidate) -> tuple[int, int, int, int]:
    return (0 if region is not None and c.region == region else 1, -c.free, c.load, c.provider_id)


def space_name(space_id: int) -> str:
    row = Space.get_or_none(Space.id == space_id)
    return row.name if row else str(space_id)


def choose(space: str, region: str | None, named: str | None, cands: list[Candidate]) -> tuple[Candidate, str]:
    """The provider the outputs go to and a sentence saying why (``space``: its name, for the
    sentences); raises NoRoom with the reason."""
    if named is not None:
        cands = [c for c in cands if c.name == named]
        if not cands:
            raise NoRoom(f"no upload target: provider {named!r} (named by the task) does not support space "
                         f"{space} with SFTP storage")
    if not cands:
        raise NoRoom(f"no upload target: no provider supports space {space} with SFTP storage")
    roomy = [c for c in cands if c.has_room]
    if not roomy:
        full = "; ".join(f"provider {c.name}: size {c.size} bytes, used {c.used or 0}"
                         + (" (over quota)" if c.over_quota else "") for c in cands)
        raise NoRoom(f"no upload target has room for space {space}: {full}")
    best = min(roomy, key=lambda c: sort_key(region, c))
    if named is not None:
        why = "named by the task"
    elif region is not None and best.region == region:
        why = f"in the worker's region {region!r}"
    else:
        why = f"none with room in the worker's region {region!r}"
    why += f"; {best.free} bytes free, {best.load} active uploads"
    others = [f"{c.name} ({'no room' if not c.has_room else f'region {c.region!r}, {c.free} free, load {c.load}'})"
              for c in cands if c is not best]
    if others:
        why += "; not " + ", ".join(others)
    return best, f"uploads go to provider {best.name} for space {space}: {why}"


def target(space_id: int, c: Candidate) -> dict[str, Any]:
    """The batch entry's ``upload``: where and how the node uploads, and the room there now."""
    return {"sftp_host": c.sftp_host, "sftp_port": c.sftp_port, "sftp_user": c.sftp_user,
            "storage_path": f"{c.storage_path.rstrip('/')}/{space_id}", "space_id": space_id,
            "space": space_name(space_id),
            "provider": c.name, "provider_id": c.provider_id, "size": c.size, "used": c.used or 0}


def remember(task_id: int, provider_id: int) -> None:
    """This task now uploads to ``provider_id`` (counts in that provider's load while active)."""
    updated = (TaskUpload.update(provider_id=provider_id, chosen_at=now())
               .where(TaskUpload.task == task_id).execute())
    if not updated:
        TaskUpload.create(task=task_id, provider_id=provider_id)


def plan(tasks: list[Task]) -> tuple[list[Task], dict[int, dict[str, Any]]]:
    """For a round's claimed tasks: the ones to launch and each uploader's target.

    A task that uploads (its type needs a space) and has nowhere to upload fails here, before
    it runs; the others get their target and an event explaining it. Each choice counts in
    the load of the next ones of the same round.
    """
    load = loads()
    kept: list[Task] = []
    chosen: dict[int, dict[str, Any]] = {}
    for task in tasks:
        if not task.space_id or not needs_space(task.name):
            kept.append(task)
            continue
        named = (task.params or {}).get("provider")
        try:
            best, why = choose(space_name(task.space_id), task.node.region, named if isinstance(named, str) else None,
                               candidates(task.space_id, load))
        except NoRoom as exc:
            states.transition(task.id, "failed", str(exc), expect=("assigned",))
            continue
        load[best.provider_id] = load.get(best.provider_id, 0) + 1
        chosen[task.id] = target(task.space_id, best)
        with write_transaction():
            remember(task.id, best.provider_id)
            states.record(task.id, "assigned", why,
                          {"upload": {"provider": best.name, "provider_id": best.provider_id},
                           "candidates": [c.describe() for c in candidates(task.space_id, load)]})
        kept.append(task)
    return kept, chosen

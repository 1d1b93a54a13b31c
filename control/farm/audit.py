"""The audit trail: change-feed entries and task events, who did each, newest first.

Both tables record their actor (``control.core.actor``); this reads them as one list for
``GET /audit``. Pages are merged from the two tables ordered by time, so a page costs
``offset + limit`` rows of each at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee

from control.farm.models import TaskEvent
from control.registry.models import Change

KINDS = ("change", "task_event")


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None  # exact, or a prefix when it ends with ":" ("user:" = every user)
    kind: str | None = None
    entity: str | None = None
    entity_id: int | None = None
    after: float | None = None
    before: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    kind: str
    id: int
    ts: float
    actor: str
    entity: str
    entity_id: int
    action: str
    reason: str
    data: Any


def _actor(column: peewee.Field, value: str) -> peewee.Expression:
    return column.startswith(value) if value.endswith(":") else (column == value)


def _matching(q: peewee.ModelSelect, f: AuditFilter, actor: peewee.Field, entity_id: peewee.Field,
              ts: peewee.Field) -> peewee.ModelSelect:
    """The filters both sources share, on each one's own columns: one rule for both."""
    if f.actor:
        q = q.where(_actor(actor, f.actor))
    if f.entity_id is not None:
        q = q.where(entity_id == f.entity_id)
    if f.after is not None:
        q = q.where(ts >= f.after)
    if f.before is not None:
        q = q.where(ts < f.before)
    return q


def _changes(f: AuditFilter) -> peewee.ModelSelect | None:
    if f.kind not in (None, "change") or f.entity == "task":
        return None
    q = Change.select()
    if f.entity:
        q = q.where(Change.entity == f.entity)
    return _matching(q, f, Change.actor, Change.entity_id, Change.ts)


def _events(f: AuditFilter) -> peewee.ModelSelect | None:
    if f.kind not in (None, "task_event") or f.entity not in (None, "task"):
        return None
    return _matching(TaskEvent.select(), f, TaskEvent.actor, TaskEvent.task, TaskEvent.ts)


def _from_change(c: Change) -> AuditEntry:
    return AuditEntry("change", c.seq, c.ts, c.actor, c.entity, c.entity_id, c.op, "", c.data)


def _from_event(e: TaskEvent) -> AuditEntry:
    action = f"{e.from_state or '-'}->{e.to_state}"
    return AuditEntry("task_event", e.id, e.ts, e.actor, "task", e.task_id, action, e.reason, e.data)


def search(f: AuditFilter, limit: int, offset: int) -> tuple[list[AuditEntry], int]:
    """One page of entries matching ``f``, newest first, and how many match in all."""
    entries: list[AuditEntry] = []
    total = 0
    changes, events = _changes(f), _events(f)
    if changes is not None:
        total += changes.count()
        entries += [_from_change(c) for c in changes.order_by(Change.ts.desc(), Change.seq.desc())
                    .limit(offset + limit)]
    if events is not None:
        total += events.count()
        entries += [_from_event(e) for e in events.order_by(TaskEvent.ts.desc(), TaskEvent.id.desc())
                    .limit(offset + limit)]
    entries.sort(key=lambda e: (e.ts, e.kind, e.id), reverse=True)
    return entries[offset:offset + limit], total

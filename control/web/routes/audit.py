"""``GET /audit``: who changed what, for the administrator only.

Change-feed entries and task events, newest first, each with its actor (``root``,
``user:<id>``, ``provider:<id>``, ``node:<name>``, ``dispatcher:<id>``; ``system`` for rows
written before actors were recorded). Kept as long as retention keeps them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from control.core.models import iso
from control.core.schemas import Page
from control.farm.audit import KINDS, AuditEntry, AuditFilter, search
from control.registry.identity import require_root
from control.web.listing import query_time
from control.web.routing import Context, Query, route


class AuditOut(BaseModel):
    kind: str = Field(description="`change` (change feed) or `task_event`")
    id: int = Field(description="The change number, or the task event's id")
    ts: str
    actor: str = Field(description="root, user:<id>, provider:<id>, node:<name>, dispatcher:<id> or system")
    entity: str = Field(description="What changed: the change's entity, or `task`")
    entity_id: int
    action: str = Field(description="create, update or delete; for a task event from->to state")
    reason: str
    data: Any = None


def audit_out(entry: AuditEntry) -> AuditOut:
    return AuditOut(kind=entry.kind, id=entry.id, ts=iso(entry.ts) or "", actor=entry.actor,
                    entity=entry.entity, entity_id=entry.entity_id, action=entry.action,
                    reason=entry.reason, data=entry.data)


@route("GET", "/audit", summary="The audit trail: changes and task events with their actor, newest first "
       "(root only)", tag="audit",
       query={"actor": Query(str, None, "Exactly this actor, or every actor starting with it when it ends "
                             "with `:` (`user:`, `node:`)"),
              "kind": Query(str, None, "Only this kind", enum=KINDS),
              "entity": Query(str, None, "Only this entity (`task` for task events)"),
              "entity_id": Query(int, None, "Only this entity id (the task id for task events)", 0, None),
              "after": Query(str, None, "At or after this time (RFC 3339, e.g. 2026-11-30T09:00:00Z)"),
              "before": Query(str, None, "Before this time (RFC 3339, e.g. 2026-11-30T09:00:00Z)"),
              "limit": Query(int, 50, "Page size", 1, 500),
              "offset": Query(int, 0, "Rows to skip", 0, 100000)},
       responses={200: Page[AuditOut]})
def list_audit(ctx: Context) -> dict[str, Any]:
    require_root(ctx.principal)
    q = ctx.query
    f = AuditFilter(actor=q["actor"], kind=q["kind"], entity=q["entity"], entity_id=q["entity_id"],
                    after=query_time("after", q["after"]) if q["after"] else None,
                    before=query_time("before", q["before"]) if q["before"] else None)
    entries, total = search(f, q["limit"], q["offset"])
    return {"items": [audit_out(e) for e in entries], "total": total, "limit": q["limit"],
            "offset": q["offset"]}

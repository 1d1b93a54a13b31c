"""``GET /queues``: each queue's depth, what runs from it, its oldest waiting task and its nodes.

Aggregates only: like the node list (whose running counts already say as much), any
user may read them; which tasks they are stays behind the task routes' access checks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from control.core.models import iso
from control.core.schemas import Page
from control.farm.queues import QueueStats, queue_stats
from control.registry.identity import require_user_or_root
from control.web.listing import page_rows
from control.web.routing import Context, paginated_query, route


class QueueOut(BaseModel):
    name: str
    queued: int = Field(description="Tasks waiting in the queue")
    running: int = Field(description="Tasks assigned to or running on a node")
    oldest_queued_at: str | None = Field(description="When the longest-waiting task was submitted")
    oldest_queued_age: float | None = Field(description="Seconds the longest-waiting task has waited")
    nodes: list[str] = Field(description="Nodes serving the queue (online or lost, cordoned or not)")
    nodes_available: int = Field(description="Of those, online and not cordoned")


def queue_out(entry: QueueStats) -> QueueOut:
    age = entry.oldest_queued_age
    return QueueOut(name=entry.name, queued=entry.queued, running=entry.running,
                    oldest_queued_at=iso(entry.oldest_queued_at),
                    oldest_queued_age=round(age, 1) if age is not None else None,
                    nodes=entry.nodes, nodes_available=entry.nodes_available)


@route("GET", "/queues", summary="Queues: depth, running tasks, oldest waiting task, nodes serving",
       tag="tasks", query=paginated_query(), responses={200: Page[QueueOut]})
def list_queues(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    return page_rows(queue_stats(), ctx, lambda q: q.name, queue_out)

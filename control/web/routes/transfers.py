"""Transfers between providers (``control.farm.transfers``): replicate, migrate, evict a path of a
space; each runs as a ``transfer`` task on a provider host, its counters reported by that node."""

from __future__ import annotations

from typing import Any

from control.core.models import iso
from control.core.schemas import Page
from control.farm import transfers
from control.farm.models import Task, Transfer
from control.farm.schemas import TransferCreate, TransferOut, TransferProgress
from control.registry.access import change_transfer, schedule_transfer, see_transfer, visible_spaces
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "transfers"


def transfer_out(t: Transfer) -> TransferOut:
    task = Task.get_or_none(Task.id == t.task_id) if t.task_id else None
    return TransferOut(id=t.id, space_id=t.space_id, path=t.path, kind=t.kind, source_id=t.source_id,
                       target_id=t.target_id, state=transfers.state_of(task.state if task else None),
                       reason=task.reason if task else "", task_id=t.task_id, runs=t.runs,
                       bytes_total=t.bytes_total, bytes_done=t.bytes_done, files_total=t.files_total,
                       files_done=t.files_done, created_at=iso(t.created_at), updated_at=iso(t.updated_at))


@route("POST", "/transfers", summary="Replicate, migrate or evict a path of a space between two providers "
                                     "supporting it (the space's admin role)", tag=TAG, body=TransferCreate,
       responses={201: TransferOut})
def create_transfer(ctx: Context) -> Reply:
    body: TransferCreate = ctx.body
    schedule_transfer(ctx.principal, body.space)
    t = transfers.create(ctx.principal, body.space, body.path, body.kind, body.source, body.target)
    return Reply(201, transfer_out(t))


@route("GET", "/transfers", summary="Transfers of the spaces the caller sees", tag=TAG, query=paginated_query(),
       responses={200: Page[TransferOut]})
def list_transfers(ctx: Context) -> dict[str, Any]:
    return paginate(transfers.visible(visible_spaces(ctx.principal)), ctx, Transfer.path, transfer_out)


@route("GET", "/transfers/{id}", summary="One transfer: its state and counters", tag=TAG,
       responses={200: TransferOut})
def get_transfer(ctx: Context, id: int) -> TransferOut:
    t = transfers.get(id)
    see_transfer(ctx.principal, t.space_id)
    return transfer_out(t)


@route("POST", "/transfers/{id}/cancel", summary="Cancel a transfer that has not ended", tag=TAG,
       responses={200: TransferOut})
def cancel_transfer(ctx: Context, id: int) -> TransferOut:
    t = transfers.get(id)
    change_transfer(ctx.principal, t.space_id)
    transfers.cancel(t, ctx.principal.describe())
    return transfer_out(transfers.get(id))


@route("POST", "/transfers/{id}/rerun", summary="Run a transfer that ended again (a new task)", tag=TAG,
       responses={200: TransferOut})
def rerun_transfer(ctx: Context, id: int) -> TransferOut:
    t = transfers.get(id)
    change_transfer(ctx.principal, t.space_id)
    return transfer_out(transfers.rerun(t, ctx.principal))


@route("POST", "/transfers/{id}/progress", summary="The node running a transfer reports its counters (signed)",
       tag=TAG, body=TransferProgress, auth="node", responses={200: TransferOut})
def transfer_progress(ctx: Context, id: int) -> TransferOut:
    body: TransferProgress = ctx.body
    counters = body.model_dump(exclude={"attempt"})
    return transfer_out(transfers.progress(id, ctx.principal.node, body.attempt, counters))

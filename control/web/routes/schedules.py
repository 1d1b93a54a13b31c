"""Schedules: a template launched on a cron expression or an interval, fired by the dispatchers.

The handlers parse, ask ``control.registry.access`` and call ``control.farm.schedules``.
A schedule is seen by whoever sees its template. Creating one takes seeing the template
and the right to submit its task (grant and space, checked again at each firing: the
tasks are submitted as the schedule's owner). Its owner, whoever may change its
template, and root change or delete it.
"""

from __future__ import annotations

from typing import Any

from control.core.schemas import Page
from control.farm import policy, schedules, submit, templates
from control.farm.models import Schedule, Template
from control.farm.schedules import ScheduleCreate, ScheduleOut, ScheduleUpdate
from control.registry import access
from control.web.listing import page_query
from control.web.routing import Context, Query, Reply, paginate, route

TAG = "schedules"


def _readable(ctx: Context, schedule_id: int) -> Schedule:
    row = schedules.get(schedule_id)
    access.see_shared(ctx.principal, row.template.owner, row.template.space_id, "schedule's template")
    return row


def _writable(ctx: Context, schedule_id: int) -> Schedule:
    row = _readable(ctx, schedule_id)
    access.change_owned_schedule(ctx.principal, row.owner, row.template.owner, row.template.space_id)
    return row


@route("POST", "/schedules", summary="Launch a template on a cron expression or an interval, as the caller",
       tag=TAG, body=ScheduleCreate, responses={201: ScheduleOut})
def create_schedule(ctx: Context) -> Reply:
    req: ScheduleCreate = ctx.body
    template = templates.get(req.template, "template")
    access.see_shared(ctx.principal, template.owner, template.space_id, "template")
    spec = templates.resolve(template.spec, None)
    prepared = submit.prepare(spec, ctx.settings, reach=False)
    policy.require_grant(ctx.principal, prepared.sub)
    policy.require_space(ctx.principal, prepared.sub)
    owner = ctx.principal.user.id if ctx.principal.user is not None else None
    row = schedules.create(req, template, owner=owner)
    return Reply(201, schedules.schedule_out(schedules.get(row.id)), {"Location": f"/api/v1/schedules/{row.id}"})


SCHEDULE_QUERY = {**page_query(), "template": Query(int, None, "Schedules of this template", 1, None)}


@route("GET", "/schedules", summary="List the schedules of the templates the caller sees", tag=TAG,
       query=SCHEDULE_QUERY, responses={200: Page[ScheduleOut]})
def list_schedules(ctx: Context) -> dict[str, Any]:
    seen = access.visible_shared(ctx.principal)
    query = Schedule.select(Schedule, Template).join(Template)
    if seen is not None:
        uid, spaces = seen
        query = query.where(((Template.owner == uid) & Template.space_id.is_null())
                            | Template.space_id.in_(sorted(spaces) or [0]))
    if ctx.query["template"] is not None:
        query = query.where(Schedule.template == ctx.query["template"])
    return paginate(query, ctx, None, schedules.schedule_out)


@route("GET", "/schedules/{id}", summary="Show a schedule: next_run, last_run and the task it made", tag=TAG,
       responses={200: ScheduleOut})
def show_schedule(ctx: Context, id: int) -> ScheduleOut:
    return schedules.schedule_out(_readable(ctx, id))


@route("PATCH", "/schedules/{id}", summary="Change a schedule's timing, enable or disable it", tag=TAG,
       body=ScheduleUpdate, responses={200: ScheduleOut})
def update_schedule(ctx: Context, id: int) -> ScheduleOut:
    return schedules.schedule_out(schedules.update(_writable(ctx, id), ctx.body))


@route("DELETE", "/schedules/{id}", summary="Delete a schedule; the tasks it made stay", tag=TAG,
       responses={204: None})
def delete_schedule(ctx: Context, id: int) -> None:
    _writable(ctx, id).delete_instance()

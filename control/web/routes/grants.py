"""Grants: who may submit which task type on which queue (root manages them).

A grant goes to a user or to a group (reaching its effective members, nested groups
included) and names a task type or ``*``, a queue or ``*``, and how far a submission may
reach (``single``, ``region``, ``all``). ``control.farm.policy`` applies them. Root
creates, lists, shows and deletes them; a user may list and show the grants that apply
to it, so "why may I not run this?" has an answer without asking.
"""

from __future__ import annotations

from typing import Any

import peewee

from control.core.errors import conflict, forbidden, invalid, not_found
from control.core.models import iso
from control.core.schemas import Page
from control.farm import catalogue
from control.farm.models import ANY, GRANT_TARGETS, Grant
from control.farm.policy import grants_for
from control.farm.schemas import GrantCreate, GrantOut
from control.registry.identity import require_root, require_user_or_root
from control.registry.models import Group, User
from control.web.routing import Context, Query, Reply, route

TAG = "grants"


def grant_out(grant: Grant) -> GrantOut:
    if grant.user_id is not None:
        holder = f"user {grant.user.username}"
    else:
        holder = f"group {grant.group.name}"
    return GrantOut(id=grant.id, user=grant.user_id, group=grant.group_id, holder=holder,
                    task_type=grant.task_type, queue=grant.queue, targets=grant.targets,
                    created_at=iso(grant.created_at))


def _with_holders() -> peewee.ModelSelect:
    return (Grant.select(Grant, User, Group)
            .join_from(Grant, User, peewee.JOIN.LEFT_OUTER)
            .join_from(Grant, Group, peewee.JOIN.LEFT_OUTER))


def get_grant(grant_id: int) -> Grant:
    grant = _with_holders().where(Grant.id == grant_id).first()
    if grant is None:
        raise not_found("grant", grant_id)
    return grant


@route("POST", "/grants", summary="Grant a user or a group the right to submit a task type on a queue "
                                  "(administrator)", tag=TAG, body=GrantCreate, responses={201: GrantOut})
def create_grant(ctx: Context) -> Reply:
    require_root(ctx.principal)
    req: GrantCreate = ctx.body
    if req.user is not None and User.get_or_none(User.id == req.user) is None:
        raise invalid(f"user: user {req.user} not found")
    if req.group is not None and Group.get_or_none(Group.id == req.group) is None:
        raise invalid(f"group: group {req.group} not found")
    if req.task_type != ANY and req.task_type not in catalogue.names():
        known = ", ".join(catalogue.names()) or "none"
        raise invalid(f"task_type: unknown task type {req.task_type!r} (known: {known}, or * for every one)")
    holder = Grant.user == req.user if req.user is not None else Grant.group == req.group
    same = Grant.get_or_none(holder, Grant.task_type == req.task_type, Grant.queue == req.queue)
    if same is not None:
        raise conflict(f"grant {same.id} already covers this holder, task type and queue (targets "
                       f"{same.targets!r}); delete it first to change it")
    grant = Grant.create(user=req.user, group=req.group, task_type=req.task_type, queue=req.queue,
                         targets=req.targets)
    created = grant.id
    return Reply(201, lambda: grant_out(get_grant(created)), {"Location": f"/api/v1/grants/{created}"})


GRANT_FILTERS = {
    "user": Query(int, None, "Grants held by this user itself", 1, None),
    "group": Query(int, None, "Grants held by this group", 1, None),
    "applies_to": Query(int, None, "Grants that apply to this user: its own and its effective groups'", 1, None),
    "task_type": Query(str, None, "Grants naming this task type (or *)"),
    "queue": Query(str, None, "Grants naming this queue (or *)"),
    "targets": Query(str, None, "Grants with these targets", enum=GRANT_TARGETS),
    "limit": Query(int, 50, "Page size", 1, 500),
    "offset": Query(int, 0, "Rows to skip", 0, None),
}


@route("GET", "/grants", summary="List grants (the administrator: all; a user: those that apply to it)",
       tag=TAG, query=GRANT_FILTERS, responses={200: Page[GrantOut]})
def list_grants(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    q = ctx.query
    query = _with_holders()
    if not ctx.principal.is_root:
        query = query.where(Grant.id.in_([g.id for g in grants_for(ctx.principal.user.id)] or [0]))
    if q["applies_to"] is not None:
        query = query.where(Grant.id.in_([g.id for g in grants_for(q["applies_to"])] or [0]))
    for key, column in (("user", Grant.user), ("group", Grant.group), ("task_type", Grant.task_type),
                        ("queue", Grant.queue), ("targets", Grant.targets)):
        if q[key] is not None:
            query = query.where(column == q[key])
    total = query.count()
    rows = query.order_by(Grant.id).limit(q["limit"]).offset(q["offset"])
    return {"items": [grant_out(g) for g in rows], "total": total, "limit": q["limit"], "offset": q["offset"]}


@route("GET", "/grants/{id}", summary="Show a grant (the administrator, or a user it applies to)", tag=TAG,
       responses={200: GrantOut})
def show_grant(ctx: Context, id: int) -> GrantOut:
    require_user_or_root(ctx.principal)
    grant = get_grant(id)
    if not ctx.principal.is_root and grant.id not in {g.id for g in grants_for(ctx.principal.user.id)}:
        raise forbidden("only the administrator and the users a grant applies to may see it")
    return grant_out(grant)


@route("DELETE", "/grants/{id}", summary="Take a grant away (administrator); queued tasks stay queued",
       tag=TAG, responses={204: None})
def delete_grant(ctx: Context, id: int) -> None:
    require_root(ctx.principal)
    get_grant(id).delete_instance()

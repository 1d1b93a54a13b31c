"""Templates: create, list, show, update (a new version each time), read old versions, delete, launch.

The handlers parse, ask ``control.registry.access`` (``see_shared``, ``change_shared``,
``new_shared_owner``) and call ``control.farm.templates``. A launch submits the template's
task as ``POST /tasks`` does, with the caller's rights (grant, space, fair use).
"""

from __future__ import annotations

from typing import Any

from control.core.schemas import Page
from control.farm import templates
from control.farm.models import Template, TemplateVersion
from control.farm.schemas import TaskDetail
from control.farm.templates import LaunchOverrides, TemplateCreate, TemplateOut, TemplateUpdate, TemplateVersionOut
from control.registry import access
from control.web.listing import page_query
from control.web.routes.tasks import detail, get_task
from control.web.routing import Context, Reply, paginate, route

TAG = "templates"
WHAT = "template"


def _readable(ctx: Context, template_id: int) -> Template:
    row = templates.get(template_id)
    access.see_shared(ctx.principal, row.owner, row.space_id, WHAT)
    return row


def _writable(ctx: Context, template_id: int) -> Template:
    row = templates.get(template_id)
    access.change_shared(ctx.principal, row.owner, row.space_id, WHAT)
    return row


@route("POST", "/templates", summary="Save a task spec as a template (version 1), owned by the caller or a space",
       tag=TAG, body=TemplateCreate, responses={201: TemplateOut})
def create_template(ctx: Context) -> Reply:
    req: TemplateCreate = ctx.body
    owner, space = access.new_shared_owner(ctx.principal, req.space, WHAT)
    row = templates.create(req, owner=owner, space=space, actor=ctx.principal.describe(), settings=ctx.settings)
    return Reply(201, templates.template_out(row), {"Location": f"/api/v1/templates/{row.id}"})


@route("GET", "/templates", summary="List the templates the caller sees (its own, its spaces'; root: all)",
       tag=TAG, query=page_query(names=True), responses={200: Page[TemplateOut]})
def list_templates(ctx: Context) -> dict[str, Any]:
    seen = access.visible_shared(ctx.principal)
    query = Template.select()
    if seen is not None:
        uid, spaces = seen
        query = query.where(((Template.owner == uid) & Template.space_id.is_null())
                            | Template.space_id.in_(sorted(spaces) or [0]))
    return paginate(query, ctx, Template.name, templates.template_out)


@route("GET", "/templates/{id}", summary="Show a template at its current version", tag=TAG,
       responses={200: TemplateOut})
def show_template(ctx: Context, id: int) -> TemplateOut:
    return templates.template_out(_readable(ctx, id))


@route("PATCH", "/templates/{id}", summary="Update a template's name or spec: a new version (owner, space admin)",
       tag=TAG, body=TemplateUpdate, responses={200: TemplateOut})
def update_template(ctx: Context, id: int) -> TemplateOut:
    row = _writable(ctx, id)
    return templates.template_out(templates.update(row, ctx.body, actor=ctx.principal.describe(),
                                                   settings=ctx.settings))


@route("DELETE", "/templates/{id}", summary="Delete a template and its schedules; its tasks stay", tag=TAG,
       responses={204: None})
def delete_template(ctx: Context, id: int) -> None:
    _writable(ctx, id).delete_instance(recursive=False)


@route("GET", "/templates/{id}/versions", summary="A template's versions, oldest first", tag=TAG,
       query=page_query(), responses={200: Page[TemplateVersionOut]})
def list_versions(ctx: Context, id: int) -> dict[str, Any]:
    _readable(ctx, id)
    return paginate(TemplateVersion.select().where(TemplateVersion.template == id), ctx, None, templates.version_out)


@route("GET", "/templates/{id}/versions/{n}", summary="One version of a template, as it was saved", tag=TAG,
       responses={200: TemplateVersionOut})
def show_version(ctx: Context, id: int, n: int) -> TemplateVersionOut:
    _readable(ctx, id)
    return templates.version_out(templates.get_version(id, n))


@route("POST", "/templates/{id}/launch",
       summary="Submit the template's task, with optional overrides; takes the rights submitting it takes",
       tag=TAG, body=LaunchOverrides, responses={201: TaskDetail})
def launch_template(ctx: Context, id: int) -> Reply:
    row = _readable(ctx, id)
    overrides = ctx.body.model_dump(mode="json", exclude_unset=True)
    created = templates.launch(row, overrides, principal=ctx.principal, settings=ctx.settings)
    return Reply(201, lambda: detail(get_task(created)), {"Location": f"/api/v1/tasks/{created}"})

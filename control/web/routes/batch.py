"""Bulk submission: ``POST /tasks/batch``, up to 1,000 tasks or template launches, all or nothing.

The handler parses each item (a task spec as ``POST /tasks`` takes it, or ``{"template": id,
...overrides}``), checks a launch's template is visible to the caller
(``control.registry.access``), and prepares each through ``control.farm.submit.prepare``;
``control.farm.submit.submit_batch`` applies the policy and writes every row in the
request's one transaction, or refuses the batch with each item's errors (index, field).
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, Field

from control.core.errors import ApiError
from control.core.schemas import MAX_ID, Input
from control.farm import submit, templates
from control.farm.models import Template
from control.farm.schemas import TaskCreate
from control.farm.submit import MAX_BATCH, ItemError, Prepared, item_errors
from control.registry import access
from control.registry.identity import require_user_or_root
from control.web.routing import Context, Reply, route

TAG = "tasks"


class BatchLaunch(templates.LaunchOverrides):  # type: ignore[misc, valid-type]
    template: int = Field(ge=1, le=MAX_ID, description="Launch this template, with the other fields as overrides")


class BatchCreate(Input):
    tasks: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH, description=(
        "Each item is a task as POST /tasks takes it, or a template launch: {\"template\": id} plus any "
        "overrides, as POST /templates/{id}/launch takes them"))
    priority: int | None = Field(default=None, ge=-1000, le=1000,
                                 description="The priority of every item that sets none (nor its template)")


class BatchOut(BaseModel):
    count: int
    ids: list[int] = Field(description="The tasks created, in the order of the items")


def _item(ctx: Context, index: int, item: dict[str, Any], priority: int | None,
          cache: dict[int, Template]) -> Prepared | list[ItemError]:
    """One item parsed and prepared, or what is wrong with it."""
    try:
        if "template" in item:
            launch = BatchLaunch.model_validate(item)
            template = cache.get(launch.template)
            if template is None:
                template = templates.get(launch.template, "template")
                access.see_shared(ctx.principal, template.owner, template.space_id, "template")
                cache[launch.template] = template
            overrides = launch.model_dump(mode="json", exclude_unset=True)
            overrides.pop("template")
            req = templates.resolve(template.spec, overrides, priority)
            return submit.prepare(req, ctx.settings, templates.origin(template))
        if priority is not None and "priority" not in item:
            item = {**item, "priority": priority}
        return submit.prepare(TaskCreate.model_validate(item), ctx.settings)
    except (ApiError, pydantic.ValidationError) as exc:
        return item_errors(index, exc)


@route("POST", "/tasks/batch",
       summary="Submit up to 1,000 tasks or template launches in one transaction: all are created, or none "
               "(422/403 with each item's errors: index and field)",
       tag=TAG, body=BatchCreate, responses={201: BatchOut})
def create_batch(ctx: Context) -> Reply:
    require_user_or_root(ctx.principal)
    req: BatchCreate = ctx.body
    cache: dict[int, Template] = {}
    items = [_item(ctx, i, item, req.priority, cache) for i, item in enumerate(req.tasks)]
    ids = submit.submit_batch(items, principal=ctx.principal, settings=ctx.settings)
    return Reply(201, BatchOut(count=len(ids), ids=ids))

"""Templates: a named task spec, versioned, launched again and again (``/api/v1/templates``).

A template holds the submission schema's dict (``TaskCreate``) as the user gave it, checked
when saved by the same ``control.farm.submit.prepare`` a submission passes: fields the
schema gains later (``resources``) pass through without this module knowing them. Every
update writes a new version and old ones stay readable; each task records the template
and version it came from.

A launch merges optional overrides into the spec (any submission field but the task type;
``params`` are merged key by key, other fields replace, an explicit null removes the
template's value) and submits the result as ``POST /tasks`` would, through
``control.farm.policy.check_submission``: launching takes the same rights as submitting
the task. Who may see and change a template is ``control.registry.access`` (``see_shared``,
``change_shared``): its owning user, or its space's members (admins change it), and root.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, Field, model_validator

from control.core.config import Settings
from control.core.errors import conflict, invalid, not_found
from control.core.models import iso, now
from control.core.schemas import MAX_ID, Input
from control.farm import submit
from control.farm.models import Template, TemplateVersion
from control.farm.schemas import TaskCreate
from control.registry.identity import Principal

TEMPLATE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class TemplateCreate(Input):
    name: str = Field(pattern=TEMPLATE_NAME, description="Unique name")
    space: int | None = Field(default=None, ge=1, le=MAX_ID, description=(
        "Owned by this space (its members see and launch it, its admins change it; the caller must be an "
        "admin). Omitted: owned by the caller"))
    spec: TaskCreate = Field(description="The task it launches, as POST /tasks takes it")


class TemplateUpdate(Input):
    name: str | None = Field(default=None, pattern=TEMPLATE_NAME)
    spec: TaskCreate | None = Field(default=None, description="Replaces the whole spec")

    @model_validator(mode="after")
    def _something(self) -> TemplateUpdate:
        if self.name is None and self.spec is None:
            raise ValueError('give "name", "spec" or both')
        return self


def _optional(info: pydantic.fields.FieldInfo) -> tuple[Any, Any]:
    """A submission field as an override: the same type and bounds, optional."""
    inner = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return inner | None, Field(default=None, description=info.description)


# Any submission field but the task type, built from TaskCreate so new fields are overridable too.
LaunchOverrides: type[Input] = pydantic.create_model(  # type: ignore[call-overload]
    "LaunchOverrides", __base__=Input,
    **{name: _optional(info) for name, info in TaskCreate.model_fields.items() if name != "name"})
LaunchOverrides.__doc__ = ("Overrides of a template's spec: params are merged key by key, other fields replace "
                           "the template's, an explicit null removes it")


class TemplateOut(BaseModel):
    id: int
    name: str
    owner: int | None = Field(description="The owning user (null: a space's, or the administrator's)")
    space: int | None = Field(description="The owning space")
    version: int = Field(description="The current version; GET .../versions/{n} reads older ones")
    spec: dict[str, Any]
    created_by: str
    created_at: str
    updated_at: str


class TemplateVersionOut(BaseModel):
    template: int
    version: int
    name: str
    spec: dict[str, Any]
    created_by: str
    created_at: str


def get(template_id: int, field: str | None = None) -> Template:
    """The template; 404 when it does not exist, or 422 naming ``field`` when a body names it."""
    row = Template.get_or_none(Template.id == template_id)
    if row is None:
        if field is not None:
            raise invalid(f"{field}: template {template_id} not found")
        raise not_found("template", template_id)
    return row


def get_version(template_id: int, version: int) -> TemplateVersion:
    row = TemplateVersion.get_or_none(TemplateVersion.template == template_id, TemplateVersion.version == version)
    if row is None:
        raise not_found(f"template {template_id} version", version)
    return row


def _checked(spec: TaskCreate, settings: Settings) -> dict[str, Any]:
    """The spec as stored: checked as a submission would be (422), then the schema's dict."""
    submit.prepare(spec, settings, reach=False)
    return spec.model_dump(mode="json", exclude_unset=True)


def _unique(name: str, template_id: int | None = None) -> None:
    same = Template.get_or_none(Template.name == name)
    if same is not None and same.id != template_id:
        raise conflict(f"name: a template named {name!r} already exists")


def create(req: TemplateCreate, *, owner: int | None, space: int | None, actor: str, settings: Settings) -> Template:
    """A new template at version 1 (the owner as ``access.new_shared_owner`` decided)."""
    spec = _checked(req.spec, settings)
    _unique(req.name)
    t = now()
    row = Template.create(name=req.name, owner=owner, space_id=space, version=1, spec=spec, created_by=actor,
                          created_at=t, updated_at=t)
    TemplateVersion.create(template=row, version=1, name=req.name, spec=spec, created_by=actor, created_at=t)
    return row


def update(row: Template, req: TemplateUpdate, *, actor: str, settings: Settings) -> Template:
    """The next version: the name and spec given replace the current ones (the unique index
    on template and version makes a concurrent update a 409)."""
    name = req.name if req.name is not None else row.name
    spec = _checked(req.spec, settings) if req.spec is not None else row.spec
    _unique(name, row.id)
    version, t = row.version + 1, now()
    TemplateVersion.create(template=row, version=version, name=name, spec=spec, created_by=actor, created_at=t)
    Template.update(name=name, spec=spec, version=version, updated_at=t).where(
        Template.id == row.id, Template.version == row.version).execute()
    return get(row.id)


def resolve(spec: dict[str, Any], overrides: dict[str, Any] | None, default_priority: int | None = None) -> TaskCreate:
    """The submission a launch makes: the spec with the overrides merged in (422 naming the field).

    ``overrides`` is the override model's dict of fields given; ``default_priority`` (a
    batch's) applies when neither sets a priority.
    """
    merged = dict(spec)
    for key, value in (overrides or {}).items():
        if key == "params" and isinstance(value, dict):
            merged["params"] = {**(merged.get("params") or {}), **value}
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if default_priority is not None and "priority" not in merged:
        merged["priority"] = default_priority
    try:
        return TaskCreate.model_validate(merged)
    except pydantic.ValidationError as exc:
        raise invalid("; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                for e in exc.errors())) from None


def origin(row: Template, schedule_id: int | None = None, due: float | None = None) -> submit.Origin:
    return submit.Origin(template_id=row.id, template_version=row.version, schedule_id=schedule_id, due=due)


def launch(row: Template, overrides: dict[str, Any] | None, *, principal: Principal, settings: Settings,
           schedule_id: int | None = None, due: float | None = None) -> int:
    """Submit the template's current version with the overrides, as its caller; the task's id."""
    req = resolve(row.spec, overrides)
    return submit.submit(req, principal=principal, settings=settings, origin=origin(row, schedule_id, due))


def template_out(row: Template) -> TemplateOut:
    return TemplateOut(id=row.id, name=row.name, owner=row.owner, space=row.space_id, version=row.version,
                       spec=row.spec or {}, created_by=row.created_by, created_at=iso(row.created_at) or "",
                       updated_at=iso(row.updated_at) or "")


def version_out(row: TemplateVersion) -> TemplateVersionOut:
    return TemplateVersionOut(template=row.template_id, version=row.version, name=row.name, spec=row.spec or {},
                              created_by=row.created_by, created_at=iso(row.created_at) or "")

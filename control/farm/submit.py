"""Submitting a task: check it against the catalogue, fan a broadcast out, write the rows.

A task names a type from the catalogue (``playbooks/tasks/<name>.yml``) and params
checked against the type's schema. ``target`` pins it to a node, or broadcasts it to
every node of a region or of the farm: a broadcast is a parent task plus one child per
node that can take it (``control.farm.eligibility``, capacity left out: a child waits for
a slot on its own node), each child visible and cancellable on its own, the parent's
state summarising its children.

Every submission passes ``control.farm.policy.check_submission`` (who may submit what)
before a row is written.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import pydantic

from control.core.config import Settings
from control.core.errors import ApiError, invalid
from control.core.models import now
from control.farm import catalogue, limits, policy, states
from control.farm.eligibility import Want, assess, available_clause, never_fits
from control.farm.models import BROADCAST_KINDS, Node
from control.farm.schemas import TaskCreate
from control.registry.identity import Principal


def fan_out(want: Want) -> list[Node]:
    """The nodes a broadcast gets a child on, by name: available, matching, big enough for its resources."""
    nodes = Node.select().where(available_clause()).order_by(Node.name)
    return assess(want, nodes, None).fits


def check_fits(want: Want) -> None:
    """422 naming the resource when no registered node could ever hold the task, even empty."""
    if not want.resources:
        return
    impossible = never_fits(want, Node.select())  # deregistered ones too: named if they could have
    if impossible is not None:
        field, why = impossible
        raise invalid(f"{field}: no registered node could ever run this task: {why}")


def _target(req: TaskCreate) -> tuple[str, str | None]:
    if req.target is None or not (req.target.node or req.target.region or req.target.all):
        return "any", None  # no target, or a label selector alone
    if req.target.node:
        return "node", req.target.node
    if req.target.region:
        return "region", req.target.region
    return "all", None


@dataclass(frozen=True)
class Origin:
    """Where a task comes from, recorded on its row: the template version launched, the schedule that fired."""

    template_id: int | None = None
    template_version: int | None = None
    schedule_id: int | None = None
    due: float | None = None  # the due time a schedule fired for, kept in the first event

    def columns(self) -> dict[str, Any]:
        return {"template_id": self.template_id, "template_version": self.template_version,
                "schedule_id": self.schedule_id}

    def event_data(self) -> dict[str, Any]:
        return {"schedule": self.schedule_id, "due": self.due} if self.schedule_id is not None else {}


@dataclass
class Prepared:
    """A request that passed every check of its own (schema, site limits, target): ready for the policy."""

    req: TaskCreate
    kind: str
    value: str | None
    limits: dict[str, Any]
    nodes: list[Node]
    sub: policy.Submission
    origin: Origin = dataclasses.field(default_factory=Origin)
    resources: dict[str, Any] | None = None  # what it asks of a node, site defaults filled in
    labels: dict[str, str] | None = None  # the target's label selector


def prepare(req: TaskCreate, settings: Settings, origin: Origin | None = None, *, reach: bool = True) -> Prepared:
    """Every check of the request itself, 422 naming the field; nothing about who asks.

    The params first (schema, NUL bytes, refused fields, the site's container images),
    so a request wrong in several ways says what is wrong with the params first; then
    limits above the site's maxima and a broadcast that reaches no node (``reach``: a
    template is saved without asking, since nodes come and go). Templates call this when
    they are saved, so a template holds only specs that could be submitted.
    """
    try:
        problems = catalogue.validate(req.name, req.params)
    except catalogue.UnknownTaskType:
        known = ", ".join(catalogue.names()) or "none"
        raise invalid(f"name: unknown task type {req.name!r} (known: {known})") from None
    if problems:
        raise invalid("; ".join(problems))
    made_by_zone = catalogue.internal(req.name)
    if made_by_zone is not None:
        raise invalid(f"name: task type {req.name!r} is not submitted: {made_by_zone}")
    image = catalogue.image_problem(req.name, req.params, settings.container_image_patterns)
    if image is not None:
        raise invalid(image)
    if req.space is None and catalogue.needs_space(req.name):
        raise invalid(f"space: task type {req.name!r} uploads its outputs to a space's storage; give a space")
    task_limits = limits.effective(req.limits, settings)  # 422 above the site's maxima
    task_resources = limits.resources(req.resources, settings)
    kind, value = _target(req)
    selector = (req.target.labels if req.target is not None else None) or None
    want = Want(kind, value, req.queue if kind in BROADCAST_KINDS else (req.queue or "default"),
                task_resources, selector)
    sub = policy.Submission(task_type=req.name, queue=req.queue, target_kind=kind, target_value=value,
                            space=req.space)
    nodes = fan_out(want) if kind in BROADCAST_KINDS and reach else []
    if kind in BROADCAST_KINDS and reach:
        if not nodes:
            check_fits(want)  # when size is why, name the resource
            where = f"in region {value!r}" if kind == "region" else "in the farm"
            serving = f" serving queue {req.queue!r}" if req.queue else ""
            labelled = f" with labels {', '.join(f'{k}={v}' for k, v in sorted(selector.items()))}" \
                if selector else ""
            roomy = " big enough for its resources" if task_resources else ""
            raise invalid(f"target: no online, uncordoned node{serving}{labelled}{roomy} {where}")
        sub = dataclasses.replace(sub, count=len(nodes))
    if reach and kind not in BROADCAST_KINDS:  # a broadcast's fan-out above already found nodes that fit
        check_fits(want)  # 422 naming the resource no registered node has enough of
    return Prepared(req, kind, value, task_limits, nodes, sub, origin or Origin(), task_resources, selector)


def _common(p: Prepared, principal: Principal) -> dict[str, Any]:
    """The columns every row of one submission shares (a broadcast's parent and children)."""
    req = p.req
    owner = principal.user.id if principal.user is not None else None
    return dict(name=req.name, params=req.params, queue=req.queue or "default", space_id=req.space, owner=owner,
                priority=req.priority, timeout=req.timeout, max_attempts=req.max_attempts, limits=p.limits,
                resources=p.resources, **p.origin.columns())


def _targeted(p: Prepared) -> dict[str, Any]:
    """The target columns of the submission's own row (a broadcast's children name their node instead)."""
    return {"target_kind": p.kind, "target_value": p.value, "target_labels": p.labels}


def _submitted(p: Prepared, principal: Principal) -> str:
    via = f" from template {p.origin.template_id} v{p.origin.template_version}" if p.origin.template_id else ""
    if p.origin.schedule_id:
        via += f" (schedule {p.origin.schedule_id})"
    return f"submitted by {principal.describe()}{via}"


def create(p: Prepared, principal: Principal, t: float | None = None) -> int:
    """Write the rows of a checked submission (a broadcast: its parent and children); its id."""
    t = now() if t is None else t
    common = _common(p, principal)
    said = _submitted(p, principal)
    data = p.origin.event_data()
    if p.kind not in BROADCAST_KINDS:
        return states.enqueue({**common, **_targeted(p)}, said, data or None, t=t).id
    parent = states.enqueue({**common, **_targeted(p)},
                            f"{said}: broadcast to {len(p.nodes)} node(s)",
                            {"nodes": [n.name for n in p.nodes], **data}, t=t)
    for node in p.nodes:
        states.enqueue({**common, "parent": parent, "target_kind": "node", "target_value": node.name},
                       f"{said}: child of broadcast {parent.id}", t=t)
    return parent.id


def submit(req: TaskCreate, *, principal: Principal, settings: Settings, origin: Origin | None = None) -> int:
    """Check the request, then create the task (a broadcast: its parent and children); its id.

    First the request itself (``prepare``: 422), then who may submit it
    (``control.farm.policy.check_submission``: grant, space, fair use). The submitter is
    the task's owner (None for the administrator).
    """
    p = prepare(req, settings, origin)
    policy.check_submission(principal, settings, p.sub)
    return create(p, principal)


# --- many at once: POST /tasks/batch ------------------------------------------------------

MAX_BATCH = 1000
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]-]*): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class ItemError:
    """What is wrong with one item of a batch: its index, the field (may be empty) and why."""

    index: int
    status: int
    field: str
    message: str


def item_errors(index: int, exc: ApiError | pydantic.ValidationError) -> list[ItemError]:
    """One ``ItemError`` per problem the exception names (``field: message``, joined by '; ')."""
    if isinstance(exc, pydantic.ValidationError):
        return [ItemError(index, 422, ".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()]
    out: list[ItemError] = []
    for part in exc.message.split("; ") if exc.status == 422 else [exc.message]:
        m = _FIELD.match(part)
        if m:
            out.append(ItemError(index, exc.status, m.group(1), m.group(2)))
        elif out:  # a message that itself holds "; " ("needs 8 GiB memory; the most free is ...")
            out[-1] = dataclasses.replace(out[-1], message=f"{out[-1].message}; {part}")
        else:
            out.append(ItemError(index, exc.status, "", part))
    return out


class BatchRefused(ApiError):
    """The whole batch refused: 422 when an item is invalid, else 403 when one may not be submitted."""

    def __init__(self, errors: list[ItemError]) -> None:
        status = 422 if any(e.status == 422 for e in errors) else 403
        items = sorted({e.index for e in errors})
        super().__init__(status, f"{len(items)} item(s) refused, nothing was submitted: "
                                 + "; ".join(f"[{e.index}] {e.field or 'item'}: {e.message}" for e in errors[:5])
                                 + (" ..." if len(errors) > 5 else ""),
                         details=[dataclasses.asdict(e) for e in errors])


def submit_batch(items: list[Prepared | list[ItemError]], *, principal: Principal, settings: Settings) -> list[int]:
    """All of a batch or nothing: checked items are created in the caller's transaction, or none are.

    ``items`` holds each item prepared, or what was wrong with it. Any invalid item refuses
    the whole batch (422, every item's errors with its index); then the policy, once for the
    batch (``policy.check_batch``: a grant and space decision per distinct kind of item, fair
    use for the batch's total), refuses items (403) or the batch (429). Rows are written in
    bulk (``states.enqueue_many``), which is what makes a batch cheap next to single POSTs.
    """
    errors = [e for item in items if isinstance(item, list) for e in item]
    if errors:
        raise BatchRefused(errors)
    ready = [item for item in items if isinstance(item, Prepared)]
    refusals = policy.check_batch(principal, settings, [p.sub for p in ready])
    if refusals:
        raise BatchRefused([e for i, exc in sorted(refusals.items()) for e in item_errors(i, exc)])
    t = now()
    ids: list[int | None] = [None] * len(ready)
    plain = [i for i, p in enumerate(ready) if p.kind not in BROADCAST_KINDS]
    rows = [{**_common(ready[i], principal), **_targeted(ready[i])} for i in plain]
    reasons = [f"{_submitted(ready[i], principal)} (batch of {len(ready)})" for i in plain]
    for i, task_id in zip(plain, states.enqueue_many(rows, reasons, t=t), strict=True):
        ids[i] = task_id
    for i, p in enumerate(ready):
        if ids[i] is None:
            ids[i] = create(p, principal, t)
    return [i for i in ids if i is not None]

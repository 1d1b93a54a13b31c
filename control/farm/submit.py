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
from typing import Any

from control.core.config import Settings
from control.core.errors import invalid
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


def submit(req: TaskCreate, *, principal: Principal, settings: Settings) -> int:
    """Check the request, then create the task (a broadcast: its parent and children); its id.

    The params first (422: schema, NUL bytes, refused fields, the site's container
    images, limits above the site's maxima), so a request wrong in several ways says what
    is wrong with the params first;
    then who may submit it (``control.farm.policy.check_submission``: grant, space, fair
    use). The submitter is the task's owner (None for the administrator).
    """
    try:
        problems = catalogue.validate(req.name, req.params)
    except catalogue.UnknownTaskType:
        known = ", ".join(catalogue.names()) or "none"
        raise invalid(f"name: unknown task type {req.name!r} (known: {known})") from None
    if problems:
        raise invalid("; ".join(problems))
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
    nodes = fan_out(want) if kind in BROADCAST_KINDS else []
    if kind in BROADCAST_KINDS:
        if not nodes:
            check_fits(want)  # when size is why, name the resource
            where = f"in region {value!r}" if kind == "region" else "in the farm"
            serving = f" serving queue {req.queue!r}" if req.queue else ""
            labelled = f" with labels {', '.join(f'{k}={v}' for k, v in sorted(selector.items()))}" \
                if selector else ""
            roomy = " big enough for its resources" if task_resources else ""
            raise invalid(f"target: no online, uncordoned node{serving}{labelled}{roomy} {where}")
        sub = dataclasses.replace(sub, count=len(nodes))
    policy.check_submission(principal, settings, sub)
    check_fits(want)  # 422 naming the resource no registered node has enough of
    who = principal.describe()
    owner = principal.user.id if principal.user is not None else None
    common: dict[str, Any] = dict(
        name=req.name, params=req.params, queue=req.queue or "default", space_id=req.space, owner=owner,
        priority=req.priority, timeout=req.timeout, max_attempts=req.max_attempts)
    t = now()
    common["limits"] = task_limits
    common["resources"] = task_resources
    if kind not in BROADCAST_KINDS:
        return states.enqueue({**common, "target_kind": kind, "target_value": value, "target_labels": selector},
                              f"submitted by {who}", t=t).id
    parent = states.enqueue({**common, "target_kind": kind, "target_value": value, "target_labels": selector},
                            f"submitted by {who}: broadcast to {len(nodes)} node(s)",
                            {"nodes": [n.name for n in nodes]}, t=t)
    for node in nodes:
        states.enqueue({**common, "parent": parent, "target_kind": "node", "target_value": node.name},
                       f"submitted by {who}: child of broadcast {parent.id}", t=t)
    return parent.id

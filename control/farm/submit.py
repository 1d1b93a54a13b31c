"""Submitting a task: check it against the catalogue, fan a broadcast out, write the rows.

A task names a type from the catalogue (``playbooks/tasks/<name>.yml``) and params
checked against the type's schema. ``target`` pins it to a node, or broadcasts it to
every node of a region or of the farm: a broadcast is a parent task plus one child per
node that can take it (``control.farm.eligibility``, capacity left out: a child waits for
a slot on its own node), each child visible and cancellable on its own, the parent's
state summarising its children.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.core.errors import invalid
from control.core.models import now
from control.farm import catalogue, states
from control.farm.eligibility import Want, assess, available_clause
from control.farm.models import BROADCAST_KINDS, Node
from control.farm.schemas import TaskCreate


def fan_out(kind: str, value: str | None, queue: str | None) -> list[Node]:
    """The nodes a broadcast gets a child on, by name: ``queue`` None means any queue."""
    nodes = Node.select().where(available_clause()).order_by(Node.name)
    return assess(Want(kind, value, queue), nodes, None).fits


def _target(req: TaskCreate) -> tuple[str, str | None]:
    if req.target is None:
        return "any", None
    if req.target.node:
        return "node", req.target.node
    if req.target.region:
        return "region", req.target.region
    return "all", None


def submit(req: TaskCreate, *, owner: int | None, who: str,
           check_space: Callable[[int], None]) -> int:
    """Create the task (a broadcast: its parent and children) and return its id.

    ``owner`` is the submitting user's id (None for the administrator), ``who`` how events
    name the submitter, and ``check_space`` the caller's access check for ``req.space``
    (raises when the submitter may not use it); it runs after the params are checked, so
    a request wrong in both says what is wrong with the params first.
    """
    try:
        problems = catalogue.validate(req.name, req.params)
    except catalogue.UnknownTaskType:
        known = ", ".join(catalogue.names()) or "none"
        raise invalid(f"name: unknown task type {req.name!r} (known: {known})") from None
    if problems:
        raise invalid("; ".join(problems))
    if req.space is not None:
        check_space(req.space)
    elif catalogue.needs_space(req.name):
        raise invalid(f"space: task type {req.name!r} uploads its outputs to a space's storage; give a space")
    kind, value = _target(req)
    common: dict[str, Any] = dict(
        name=req.name, params=req.params, queue=req.queue or "default", space_id=req.space, owner=owner,
        priority=req.priority, timeout=req.timeout, max_attempts=req.max_attempts)
    t = now()
    common["limits"] = req.limits.model_dump(exclude_none=True) if req.limits is not None else None
    if kind not in BROADCAST_KINDS:
        return states.enqueue({**common, "target_kind": kind, "target_value": value},
                              f"submitted by {who}", t=t).id
    nodes = fan_out(kind, value, req.queue)
    if not nodes:
        where = f"in region {value!r}" if kind == "region" else "in the farm"
        serving = f" serving queue {req.queue!r}" if req.queue else ""
        raise invalid(f"target: no online, uncordoned node{serving} {where}")
    parent = states.enqueue({**common, "target_kind": kind, "target_value": value},
                            f"submitted by {who}: broadcast to {len(nodes)} node(s)",
                            {"nodes": [n.name for n in nodes]}, t=t)
    for node in nodes:
        states.enqueue({**common, "parent": parent, "target_kind": "node", "target_value": node.name},
                       f"submitted by {who}: child of broadcast {parent.id}", t=t)
    return parent.id

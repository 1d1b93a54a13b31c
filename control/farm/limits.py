"""A task's limits and resources: what it asked for, the site's defaults for the rest.

Limits are refused above the site's maxima; resources (what placement reserves on a node,
``resources``) are refused by submission when no node could ever hold them.

The settings ``task_memory_mb_*``, ``task_cpus_*`` and ``task_processes_*`` (zone role:
``zone_task_limits_default``/``zone_task_limits_max``) are the site's defaults and maxima.
The effective limits are stored with the task and travel in the dispatcher's batch; the
worker's sandbox enforces them, capped once more at the node's own maxima (its policy),
so a node smaller than the site never runs a task bigger than itself.
"""

from __future__ import annotations

from typing import Any

from control.core.config import Settings
from control.core.errors import invalid
from control.farm.schemas import TaskLimits, TaskResources

KINDS = ("memory_mb", "cpus", "processes")


def effective(requested: TaskLimits | None, settings: Settings) -> dict[str, Any]:
    """The limits a task runs with; 422 naming the field when one is above the site's maximum."""
    asked = requested.model_dump(exclude_none=True) if requested is not None else {}
    out: dict[str, Any] = {}
    for kind in KINDS:
        top = getattr(settings, f"task_{kind}_max")
        value = asked.get(kind, getattr(settings, f"task_{kind}_default"))
        if value > top:
            raise invalid(f"limits.{kind}: {value} is above this site's maximum of {top} "
                          f"(setting task_{kind}_max)")
        out[kind] = value
    return out


def resources(requested: TaskResources | None, settings: Settings) -> dict[str, float] | None:
    """What a task reserves on its node: what it asked for over the site's ``task_resources_default``.

    Amounts of 0 are dropped (0 asks for nothing); None when nothing is left, so such a
    task is placed by concurrency alone.
    """
    asked = requested.amounts() if requested is not None else {}
    merged = {k: v for k, v in {**settings.resources_default, **asked}.items() if v > 0}
    return merged or None

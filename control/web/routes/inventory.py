"""The node registry as an Ansible dynamic inventory (``ansible-inventory --list`` JSON).

Groups: ``queue_<queue>`` and ``region_<region>`` (names reduced to ``[A-Za-z0-9_]``),
plus ``zonefarm_online``, ``zonefarm_lost`` and ``zonefarm_cordoned``; ``all`` holds
them all. Hostvars carry how Ansible reaches each node and what it serves, never a
secret: the nodes secret stays in the node's own INI file.
"""

from __future__ import annotations

import re
from typing import Any

from control.farm.models import Node
from control.farm.schemas import INVENTORY_SCHEMA
from control.registry.identity import require_user_or_root
from control.web.routing import Context, Query, route

TAG = "nodes"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def group_name(prefix: str, value: str) -> str:
    return f"{prefix}_{_UNSAFE.sub('_', value)}"


def hostvars(node: Node) -> dict[str, Any]:
    return {
        "ansible_host": node.ansible_host,
        "ansible_port": node.ansible_port,
        "ansible_user": node.ansible_user,
        "ansible_connection": node.ansible_connection,
        "ansible_python_interpreter": node.python or "auto",
        "zonefarm_region": node.region,
        "zonefarm_queues": list(node.queues or []),
        "zonefarm_concurrency": node.concurrency,
        "zonefarm_labels": dict(node.labels or {}),
        "zonefarm_resources": dict(node.resources or {}),
        "zonefarm_workdir": node.workdir,
        "zonefarm_state": node.state,
        "zonefarm_cordoned": node.cordoned,
    }


def build_inventory(nodes: list[Node]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    meta: dict[str, Any] = {}
    for node in nodes:
        meta[node.name] = hostvars(node)
        names = [group_name("region", node.region), f"zonefarm_{node.state}"]
        names += [group_name("queue", q) for q in node.queues or []]
        if node.cordoned:
            names.append("zonefarm_cordoned")
        for g in names:
            groups.setdefault(g, []).append(node.name)
    out: dict[str, Any] = {"_meta": {"hostvars": meta},
                           "all": {"children": sorted(groups) + ["ungrouped"], "hosts": []}}
    for g in sorted(groups):
        out[g] = {"hosts": sorted(set(groups[g]))}
    return out


@route("GET", "/inventory", summary="The nodes as an Ansible dynamic inventory (groups per queue and region)",
       tag=TAG, query={"state": Query(str, None, "Only nodes in this state", enum=("online", "lost"))},
       responses={200: INVENTORY_SCHEMA})
def get_inventory(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    query = Node.select().where(Node.state != "deregistered")
    if ctx.query["state"]:
        query = query.where(Node.state == ctx.query["state"])
    return build_inventory(list(query.order_by(Node.name)))

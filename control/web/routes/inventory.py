"""The node registry as an Ansible dynamic inventory (``ansible-inventory --list`` JSON).

Groups: ``queue_<queue>`` and ``region_<region>`` (names reduced to ``[A-Za-z0-9_]``),
plus ``zonefarm_online``, ``zonefarm_lost`` and ``zonefarm_cordoned``; ``all`` holds
them all. Hostvars (``control.farm.hostvars``, the dispatcher's too) carry how Ansible
reaches each node and what it serves, never a secret: the nodes secret stays in the
node's own INI file.
"""

from __future__ import annotations

from typing import Any

from control.farm.hostvars import dynamic_inventory
from control.farm.models import Node
from control.farm.schemas import INVENTORY_SCHEMA
from control.registry.identity import require_user_or_root
from control.web.routing import Context, Query, route

TAG = "nodes"


@route("GET", "/inventory", summary="The nodes as an Ansible dynamic inventory (groups per queue and region)",
       tag=TAG, query={"state": Query(str, None, "Only nodes in this state", enum=("online", "lost"))},
       responses={200: INVENTORY_SCHEMA})
def get_inventory(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    query = Node.select().where(Node.state != "deregistered")
    if ctx.query["state"]:
        query = query.where(Node.state == ctx.query["state"])
    return dynamic_inventory(list(query.order_by(Node.name)))

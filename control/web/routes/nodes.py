"""Worker nodes: signed registration and heartbeats, and the administrator's controls.

A node registers (idempotently: registering again updates it and brings it back
online) and then heartbeats; a node silent past ``node_lease`` is marked lost by the
reaper. Cordon stops new work, drain is cordon plus "tell me when it is empty",
uncordon undoes both, and deregistering (refused while tasks run there) keeps the row
for the task history but takes it out of every listing, claim and inventory.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import ApiError, conflict, forbidden, not_found
from control.core.models import iso, now
from control.core.schemas import Page
from control.farm.claims import active_counts
from control.farm.models import ACTIVE, Node, Task
from control.farm.schemas import HeartbeatOut, NodeHeartbeat, NodeOut, NodeRegister
from control.registry.identity import Principal, require_root, require_user_or_root
from control.web.routing import Context, Query, Reply, route

TAG = "nodes"


def node_out(node: Node, running: int) -> NodeOut:
    takes = node.state == "online" and not node.cordoned
    return NodeOut(
        name=node.name, state=node.state, cordoned=node.cordoned, draining=node.draining,
        drained=node.draining and running == 0, region=node.region, hostname=node.hostname,
        dispatch_error=node.dispatch_error or "",
        pid=node.pid, queues=list(node.queues or []), concurrency=node.concurrency, running=running,
        free=max(node.concurrency - running, 0) if takes else 0, resources=node.resources or {},
        labels=node.labels or {}, ansible_host=node.ansible_host, ansible_port=node.ansible_port,
        ansible_user=node.ansible_user, ansible_connection=node.ansible_connection,
        python=node.python, workdir=node.workdir, registered_at=iso(node.registered_at),
        last_seen=iso(node.last_seen), last_seen_age=round(max(now() - node.last_seen, 0.0), 3))


def _one_out(node: Node) -> NodeOut:
    return node_out(node, active_counts([node.id]).get(node.id, 0))


def get_node(name: str, *, include_deregistered: bool = False) -> Node:
    node = Node.get_or_none(Node.name == name)
    if node is None or (node.state == "deregistered" and not include_deregistered):
        raise not_found("node", name)
    return node


def _same_node(principal: Principal, name: str) -> None:
    if principal.node != name:
        raise forbidden(f"signed by node {principal.node!r}, not {name!r}")


@route("POST", "/nodes/register", summary="Register a node, or update its registration (signed by the node)",
       tag=TAG, body=NodeRegister, auth="node", responses={200: NodeOut, 201: NodeOut})
def register_node(ctx: Context) -> Reply:
    req: NodeRegister = ctx.body
    _same_node(ctx.principal, req.name)
    values = req.model_dump()
    t = now()
    # Write first: on SQLite that takes the write lock before anything is read.
    Node.update(registered_at=t).where(Node.name == req.name, Node.state == "deregistered").execute()
    if Node.update(**values, state="online", last_seen=t).where(Node.name == req.name).execute():
        return Reply(200, _one_out(Node.get(Node.name == req.name)))
    node = Node.create(**values, state="online", registered_at=t, last_seen=t)
    return Reply(201, _one_out(node), {"Location": f"/api/v1/nodes/{node.name}"})


@route("POST", "/nodes/{name}/heartbeat", summary="Keep a node online (signed by the node)", tag=TAG,
       body=NodeHeartbeat, auth="node", str_params=("name",), responses={200: HeartbeatOut})
def heartbeat(ctx: Context, name: str) -> HeartbeatOut:
    _same_node(ctx.principal, name)
    req: NodeHeartbeat = ctx.body
    values: dict[Any, Any] = {Node.last_seen: now(), Node.state: "online"}
    if req.pid is not None:
        values[Node.pid] = req.pid
    if req.resources is not None:
        values[Node.resources] = req.resources
    # Write first (SQLite takes its write lock before any read); a deregistered node is gone.
    if not Node.update(values).where(Node.name == name, Node.state != "deregistered").execute():
        raise not_found("node", name)
    node = Node.get(Node.name == name)
    cancel = [t.id for t in Task.select(Task.id).where(Task.node == node.id, Task.state.in_(ACTIVE),
                                                        Task.cancel_requested == True)  # noqa: E712
              .order_by(Task.id)]
    return HeartbeatOut(node=_one_out(node), cancel=cancel)


NODE_FILTERS = {
    "state": Query(str, None, "Node state", enum=("online", "lost")),
    "region": Query(str, None, "Region"),
    "queue": Query(str, None, "Nodes serving this queue"),
    "cordoned": Query(bool, None, "Cordoned (or draining) nodes only, or uncordoned only"),
    "name": Query(str, None, "Case-insensitive substring of the name"),
    "limit": Query(int, 100, "Page size", 1, 1000),
    "offset": Query(int, 0, "Rows to skip", 0, None),
}


@route("GET", "/nodes", summary="List nodes with their state, running tasks and last-seen time", tag=TAG,
       query=NODE_FILTERS, responses={200: Page[NodeOut]})
def list_nodes(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    q = ctx.query
    query = Node.select().where(Node.state != "deregistered")
    if q["state"]:
        query = query.where(Node.state == q["state"])
    if q["region"]:
        query = query.where(Node.region == q["region"])
    if q["cordoned"] is not None:
        query = query.where(Node.cordoned == q["cordoned"])
    if q["name"]:
        query = query.where(Node.name.contains(q["name"]))
    nodes = list(query.order_by(Node.name))
    if q["queue"]:
        nodes = [n for n in nodes if q["queue"] in (n.queues or [])]
    total = len(nodes)
    page = nodes[q["offset"]:q["offset"] + q["limit"]]
    active = active_counts([n.id for n in page]) if page else {}
    return {"items": [node_out(n, active.get(n.id, 0)) for n in page], "total": total,
            "limit": q["limit"], "offset": q["offset"]}


@route("GET", "/nodes/{name}", summary="Show a node", tag=TAG, str_params=("name",),
       responses={200: NodeOut})
def show_node(ctx: Context, name: str) -> NodeOut:
    require_user_or_root(ctx.principal)
    return _one_out(get_node(name))


def _set_flags(ctx: Context, name: str, **flags: bool) -> NodeOut:
    require_root(ctx.principal)
    node = get_node(name)
    Node.update(**flags).where(Node.id == node.id).execute()
    return _one_out(Node.get_by_id(node.id))


@route("POST", "/nodes/{name}/cordon", summary="Cordon a node: it takes no new task (administrator)",
       tag=TAG, str_params=("name",), responses={200: NodeOut})
def cordon_node(ctx: Context, name: str) -> NodeOut:
    return _set_flags(ctx, name, cordoned=True)


@route("POST", "/nodes/{name}/uncordon", summary="Uncordon a node (also ends a drain) (administrator)",
       tag=TAG, str_params=("name",), responses={200: NodeOut})
def uncordon_node(ctx: Context, name: str) -> NodeOut:
    return _set_flags(ctx, name, cordoned=False, draining=False)


@route("POST", "/nodes/{name}/drain",
       summary="Drain a node: cordon it and let its tasks finish; `drained` turns true when empty "
               "(administrator)",
       tag=TAG, str_params=("name",), responses={200: NodeOut})
def drain_node(ctx: Context, name: str) -> NodeOut:
    return _set_flags(ctx, name, cordoned=True, draining=True)


@route("DELETE", "/nodes/{name}", summary="Deregister a node; refused while tasks run there (administrator)",
       tag=TAG, str_params=("name",), responses={204: None})
def deregister_node(ctx: Context, name: str) -> None:
    require_root(ctx.principal)
    node = get_node(name)
    running = active_counts([node.id]).get(node.id, 0)
    if running:
        raise conflict(f"node {name} still runs {running} task(s); drain it first")
    changed = (Node.update(state="deregistered", cordoned=False, draining=False)
               .where(Node.id == node.id, Node.state != "deregistered").execute())
    if not changed:
        raise ApiError(404, f"node {name} not found")

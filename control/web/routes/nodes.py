"""Worker nodes: signed registration and heartbeats, enrollment, and the administrator's controls.

These handlers check who is asking and call ``control.farm.nodes``, which says what
registering, enrolling, heartbeating, cordoning, draining and deregistering do. Every
node request is signed with the node's own key (``control.web.nodeauth``), so only the
node itself can change its registration; an enrolled node gets its key once, here.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import forbidden
from control.core.models import iso, now
from control.core.schemas import Page
from control.farm import nodes
from control.farm.eligibility import Usage, free_slots, load_usage, unavailable
from control.farm.models import Node
from control.farm.schemas import (
    HeartbeatOut,
    JoinTokenIn,
    JoinTokenOut,
    NodeCredential,
    NodeEnroll,
    NodeEnrolled,
    NodeHeartbeat,
    NodeOut,
    NodeRegister,
)
from control.node.signing import derive_node_key
from control.registry.identity import Principal, require_root, require_user_or_root
from control.web.nodeauth import signed_generation
from control.web.routing import Context, Query, Reply, route

TAG = "nodes"


def node_out(node: Node, usage: Usage) -> NodeOut:
    takes = unavailable(node) is None
    running = usage.tasks
    return NodeOut(
        name=node.name, state=node.state, cordoned=node.cordoned, draining=node.draining,
        drained=node.draining and running == 0, region=node.region, hostname=node.hostname,
        dispatch_error=node.dispatch_error or "",
        pid=node.pid, queues=list(node.queues or []), concurrency=node.concurrency, running=running,
        free=max(free_slots(node, running), 0) if takes else 0, resources=node.resources or {},
        reserved=usage.reserved, held_for=usage.held_for,
        labels=node.labels or {}, ansible_host=node.ansible_host, ansible_port=node.ansible_port,
        ansible_user=node.ansible_user, ansible_connection=node.ansible_connection,
        python=node.python, workdir=node.workdir, registered_at=iso(node.registered_at),
        last_seen=iso(node.last_seen), last_seen_age=round(max(now() - node.last_seen, 0.0), 3),
        key_generation=node.key_generation)


def _one_out(node: Node) -> NodeOut:
    return node_out(node, load_usage([node.id]).get(node.id) or Usage())


def _same_node(principal: Principal, name: str) -> None:
    if principal.node != name:
        raise forbidden(f"signed by node {principal.node!r}, not {name!r}")


@route("POST", "/nodes/register", summary="Register a node, or update its registration (signed by the node)",
       tag=TAG, body=NodeRegister, auth="node", responses={200: NodeOut, 201: NodeOut})
def register_node(ctx: Context) -> Reply:
    req: NodeRegister = ctx.body
    _same_node(ctx.principal, req.name)
    node, created = nodes.register(req, signed_generation(ctx.headers))
    if created:
        return Reply(201, _one_out(node), {"Location": f"/api/v1/nodes/{node.name}"})
    return Reply(200, _one_out(node))


@route("POST", "/nodes/tokens", summary="Issue a single-use join token that enrolls one new node name "
                                        "(administrator)",
       tag=TAG, body=JoinTokenIn, responses={201: JoinTokenOut})
def issue_join_token(ctx: Context) -> Reply:
    require_root(ctx.principal)
    req: JoinTokenIn = ctx.body
    plain, expires = nodes.issue_join_token(req.name, req.ttl)
    return Reply(201, JoinTokenOut(token=plain, name=req.name, expires_at=iso(expires)))


@route("POST", "/nodes/enroll", summary="Enroll a new node with a join token; answers the node's own key, once",
       tag=TAG, body=NodeEnroll, auth="none", responses={201: NodeEnrolled})
def enroll_node(ctx: Context) -> Reply:
    req: NodeEnroll = ctx.body
    node = nodes.enroll(req.token, req.registration)
    key = derive_node_key(ctx.settings.nodes_secret, node.name, node.key_generation)
    return Reply(201, NodeEnrolled(node=_one_out(node), credential=NodeCredential(
                     node_key=key, key_generation=node.key_generation)),
                 {"Location": f"/api/v1/nodes/{node.name}"})


@route("POST", "/nodes/{name}/heartbeat", summary="Keep a node online (signed by the node)", tag=TAG,
       body=NodeHeartbeat, auth="node", str_params=("name",), responses={200: HeartbeatOut})
def heartbeat(ctx: Context, name: str) -> HeartbeatOut:
    _same_node(ctx.principal, name)
    node, cancel = nodes.heartbeat(name, ctx.body)
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
    listed = list(query.order_by(Node.name))
    if q["queue"]:
        listed = [n for n in listed if n.serves(q["queue"])]
    total = len(listed)
    page = listed[q["offset"]:q["offset"] + q["limit"]]
    usage = load_usage([n.id for n in page]) if page else {}
    return {"items": [node_out(n, usage.get(n.id) or Usage()) for n in page], "total": total,
            "limit": q["limit"], "offset": q["offset"]}


@route("GET", "/nodes/{name}", summary="Show a node", tag=TAG, str_params=("name",),
       responses={200: NodeOut})
def show_node(ctx: Context, name: str) -> NodeOut:
    require_user_or_root(ctx.principal)
    return _one_out(nodes.get(name))


@route("POST", "/nodes/{name}/cordon", summary="Cordon a node: it takes no new task (administrator)",
       tag=TAG, str_params=("name",), responses={200: NodeOut})
def cordon_node(ctx: Context, name: str) -> NodeOut:
    require_root(ctx.principal)
    return _one_out(nodes.cordon(name))


@route("POST", "/nodes/{name}/uncordon", summary="Uncordon a node (also ends a drain) (administrator)",
       tag=TAG, str_params=("name",), responses={200: NodeOut})
def uncordon_node(ctx: Context, name: str) -> NodeOut:
    require_root(ctx.principal)
    return _one_out(nodes.uncordon(name))


@route("POST", "/nodes/{name}/drain",
       summary="Drain a node: cordon it and let its tasks finish; `drained` turns true when empty "
               "(administrator)",
       tag=TAG, str_params=("name",), responses={200: NodeOut})
def drain_node(ctx: Context, name: str) -> NodeOut:
    require_root(ctx.principal)
    return _one_out(nodes.drain(name))


@route("DELETE", "/nodes/{name}", summary="Deregister a node; refused while tasks run there (administrator)",
       tag=TAG, str_params=("name",), responses={204: None})
def deregister_node(ctx: Context, name: str) -> None:
    require_root(ctx.principal)
    nodes.deregister(name)

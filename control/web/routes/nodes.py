"""Worker nodes: signed registration and heartbeats, enrollment, and the administrator's controls.

A node registers (idempotently: registering again updates it and brings it back
online) and then heartbeats; a node silent past ``node_lease`` is marked lost by the
reaper. Every one of these requests is signed with the node's own key
(``control.web.nodeauth``), so only the node itself can change its registration. A new
name is enrolled either by a key the Ansible controller derived for it, or by a
single-use, expiring join token the administrator issues (``POST /nodes/tokens``,
then ``POST /nodes/enroll``, which hands the node its key once). Cordon stops new work,
drain is cordon plus "tell me when it is empty", uncordon undoes both, and
deregistering (refused while tasks run there) keeps the row for the task history but
takes it out of every listing, claim and inventory, and revokes the node's key.
"""

from __future__ import annotations

import secrets
from typing import Any

from control.core.errors import ApiError, conflict, forbidden, not_found, unauthorized
from control.core.models import iso, now
from control.core.schemas import Page
from control.farm.claims import active_counts
from control.farm.models import ACTIVE, Node, NodeJoinToken, Task
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
from control.registry.identity import Principal, digest, require_root, require_user_or_root
from control.web.nodeauth import signed_generation
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
        last_seen=iso(node.last_seen), last_seen_age=round(max(now() - node.last_seen, 0.0), 3),
        key_generation=node.key_generation)


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
    # A new name: the signature was checked with the key derived for it (nodeauth), which
    # only the zone and the controller can make: that is its enrollment.
    node = Node.create(**values, state="online", registered_at=t, last_seen=t,
                       key_generation=signed_generation(ctx.headers))
    return Reply(201, _one_out(node), {"Location": f"/api/v1/nodes/{node.name}"})


@route("POST", "/nodes/tokens", summary="Issue a single-use join token that enrolls one new node name "
                                        "(administrator)",
       tag=TAG, body=JoinTokenIn, responses={201: JoinTokenOut})
def issue_join_token(ctx: Context) -> Reply:
    require_root(ctx.principal)
    req: JoinTokenIn = ctx.body
    if Node.select().where(Node.name == req.name, Node.state != "deregistered").exists():
        raise conflict(f"node {req.name} is registered; it re-registers with its own key")
    plain = "zfj_" + secrets.token_urlsafe(32)
    expires = now() + req.ttl
    NodeJoinToken.create(token_hash=digest(plain), name=req.name, expires_at=expires)
    return Reply(201, JoinTokenOut(token=plain, name=req.name, expires_at=iso(expires)))


@route("POST", "/nodes/enroll", summary="Enroll a new node with a join token; answers the node's own key, once",
       tag=TAG, body=NodeEnroll, auth="none", responses={201: NodeEnrolled})
def enroll_node(ctx: Context) -> Reply:
    """The token is spent by the same transaction that enrolls: a refusal leaves it unused."""
    req: NodeEnroll = ctx.body
    reg = req.registration
    t = now()
    # Write first (SQLite takes its write lock before any read): spend the token if it is live.
    spent = (NodeJoinToken.update(used_at=t)
             .where(NodeJoinToken.token_hash == digest(req.token), NodeJoinToken.used_at.is_null(),
                    NodeJoinToken.expires_at > t).execute())
    if not spent:
        raise unauthorized("join token refused: unknown, expired or already used")
    token = NodeJoinToken.get(NodeJoinToken.token_hash == digest(req.token))
    if token.name != reg.name:
        raise forbidden(f"this join token enrolls {token.name!r}, not {reg.name!r}")
    existing = Node.get_or_none(Node.name == reg.name)
    if existing is not None and existing.state != "deregistered":
        raise conflict(f"node {reg.name} is registered; it re-registers with its own key")
    generation = existing.key_generation if existing is not None else 0
    values = {**reg.model_dump(), "state": "online", "registered_at": t, "last_seen": t,
              "cordoned": False, "draining": False, "key_generation": generation,
              "key_previous_generation": None, "key_previous_until": 0}
    if existing is not None:
        Node.update(**values).where(Node.id == existing.id).execute()
        node = Node.get_by_id(existing.id)
    else:
        node = Node.create(**values)
    key = derive_node_key(ctx.settings.nodes_secret, reg.name, generation)
    return Reply(201, NodeEnrolled(node=_one_out(node), credential=NodeCredential(node_key=key,
                                                                                  key_generation=generation)),
                 {"Location": f"/api/v1/nodes/{node.name}"})


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
    # The key generation moves on: the node's key (and any previous one) stops signing.
    changed = (Node.update(state="deregistered", cordoned=False, draining=False,
                           key_generation=Node.key_generation + 1, key_previous_generation=None,
                           key_previous_until=0)
               .where(Node.id == node.id, Node.state != "deregistered").execute())
    if not changed:
        raise ApiError(404, f"node {name} not found")

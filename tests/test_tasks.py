"""Task submission, validation, broadcasts, listing, "why isn't it starting", cancel and
visibility, over real HTTP on both databases. Claims run in-process against the same
database the live server uses, standing in for a dispatcher round."""

from __future__ import annotations

import pytest

from control.core.db import connection
from control.farm.claims import claim
from control.farm.models import Node
from tests.conftest import NODES_SECRET
from tests.support.client import Api
from tests.support.nodes import SignedNode
from tests.support.registry import join

SHELL = {"name": "shell", "params": {"argv": ["echo", "hi"]}}


def register(api: Api, name: str, **kw: object) -> SignedNode:
    node = SignedNode(api, name, NODES_SECRET)
    resp = node.register(**kw)
    assert resp.status_code in (200, 201), resp.text
    return node


def submit(api: Api, token: str | None = None, **body: object) -> dict:
    resp = api.post("/tasks", token=token or api.root, json={**SHELL, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def error(resp) -> str:  # noqa: ANN001
    return resp.json()["error"]["message"]


def test_submit_shell_task_and_read_it_back(api: Api) -> None:
    created = api.post("/tasks", token=api.root, json={**SHELL, "priority": 3, "timeout": 60, "max_attempts": 2})
    assert created.status_code == 201, created.text
    task = created.json()
    assert created.headers["Location"] == f"/api/v1/tasks/{task['id']}"
    assert task["state"] == "queued" and task["attempt"] == 0 and task["queue"] == "default"
    assert task["target"] == {"kind": "any", "value": None, "labels": None} and task["owner"] is None
    shown = api.get(f"/tasks/{task['id']}", token=api.root).json()
    assert shown["params"] == {"argv": ["echo", "hi"]} and shown["priority"] == 3
    events = api.get(f"/tasks/{task['id']}/events", token=api.root).json()
    assert [e["to_state"] for e in events] == ["queued"] and "submitted by root" in events[0]["reason"]


@pytest.mark.parametrize("body, field", [
    ({"name": "nope"}, "name"),
    ({"name": "shell", "params": {}}, "params.argv"),
    ({"name": "shell", "params": {"argv": []}}, "params.argv"),
    ({"name": "shell", "params": {"argv": ["x"], "env": {"A": 1}}}, "params.env.A"),
    ({"name": "shell", "params": {"argv": ["x"], "shell": True}}, "params.shell"),
    ({"name": "container", "params": {"image": "busybox", "pull": "always"}}, "params.pull"),
    ({"name": "pipeline", "params": {"generate": [["true"]], "outputs": ["/etc/passwd"]}}, "params.outputs[0]"),
    ({"name": "pipeline", "params": {"generate": [["true"]], "outputs": ["out.txt"]}}, "space"),
    ({**SHELL, "target": {"node": "a", "all": True}}, "target"),
    ({**SHELL, "target": {}}, "target"),
    ({**SHELL, "priority": 5000}, "priority"),
    ({**SHELL, "timeout": 0}, "timeout"),
    ({**SHELL, "space": 999}, "space"),
    ({**SHELL, "colour": "red"}, "colour"),
])
def test_bad_submissions_get_422_naming_the_field(api: Api, body: dict, field: str) -> None:
    resp = api.post("/tasks", token=api.root, json=body)
    assert resp.status_code == 422, resp.text
    assert field in error(resp)


def test_task_types_are_listed_with_their_schemas(api: Api) -> None:
    types = {t["name"]: t for t in api.get("/task-types", token=api.root).json()}
    assert {"shell", "container", "pipeline"} <= set(types)
    assert types["shell"]["params_schema"]["required"] == ["argv"]


def test_broadcast_creates_one_child_per_node_each_cancellable(api: Api) -> None:
    for name, region in (("eu1", "eu"), ("eu2", "eu"), ("us1", "us")):
        register(api, name, region=region)
    api.post("/nodes/eu2/cordon", token=api.root)
    region = submit(api, target={"region": "eu"})
    assert [c["node"] for c in region["children"]] == ["eu1"]  # the cordoned node takes nothing new
    everyone = submit(api, target={"all": True})
    assert [c["node"] for c in everyone["children"]] == ["eu1", "us1"]
    kids = api.get("/tasks", token=api.root, params={"parent": everyone["id"]}).json()
    assert kids["total"] == 2 and all(k["target"]["kind"] == "node" for k in kids["items"])
    first, second = everyone["children"]
    assert api.post(f"/tasks/{first['id']}/cancel", token=api.root).json()["state"] == "cancelled"
    parent = api.get(f"/tasks/{everyone['id']}", token=api.root).json()
    assert parent["state"] == "queued" and {c["state"] for c in parent["children"]} == {"cancelled", "queued"}
    assert api.post(f"/tasks/{everyone['id']}/cancel", token=api.root).json()["state"] == "cancelled"
    assert api.get(f"/tasks/{second['id']}", token=api.root).json()["state"] == "cancelled"
    assert api.post(f"/tasks/{everyone['id']}/cancel", token=api.root).status_code == 409
    nobody = api.post("/tasks", token=api.root, json={**SHELL, "target": {"region": "mars"}})
    assert nobody.status_code == 422 and "target" in error(nobody)


def test_why_a_queued_task_is_not_starting(api: Api) -> None:
    def why(task: dict) -> list[str]:
        return [b["code"] for b in api.get(f"/tasks/{task['id']}", token=api.root).json()["blockers"]]

    t = submit(api, queue="gpu")
    assert why(t) == ["no_node_serves_queue"]
    pinned = submit(api, target={"node": "ghost"})
    assert why(pinned) == ["target_node_unknown"]
    register(api, "g1", queues=["gpu"], concurrency=1)
    assert why(t) == ["waiting_for_dispatcher"]
    api.post("/nodes/g1/cordon", token=api.root)
    assert why(t) == ["all_cordoned"]
    api.post("/nodes/g1/uncordon", token=api.root)
    with connection():
        Node.update(state="lost").where(Node.name == "g1").execute()
    body = api.get(f"/tasks/{t['id']}", token=api.root).json()
    assert [b["code"] for b in body["blockers"]] == ["all_lost"] and "g1" in body["why"]
    with connection():
        Node.update(state="online").where(Node.name == "g1").execute()
    second = submit(api, queue="gpu")
    [claimed] = claim("test", 5)
    assert claimed.id == t["id"]
    assert why(second) == ["all_busy"]
    assert api.get(f"/tasks/{t['id']}", token=api.root).json()["blockers"] == []  # not queued any more
    third = submit(api, queue="gpu")
    assert why(third) == ["all_busy", "behind_others"]
    register(api, "p1", concurrency=1)
    target = submit(api, target={"node": "p1"})
    api.post("/nodes/p1/drain", token=api.root)
    assert why(target) == ["target_node_draining"]


def test_list_filters_and_pagination(api: Api) -> None:
    register(api, "n1", concurrency=1)
    a = submit(api)
    b = submit(api, name="container", params={"image": "busybox"})
    claim("test", 1)
    ids = lambda **p: [t["id"] for t in api.get("/tasks", token=api.root, params=p).json()["items"]]  # noqa: E731
    assert ids() == [b["id"], a["id"]]  # newest first
    assert ids(state="assigned") == [a["id"]]
    assert ids(node="n1") == [a["id"]]
    assert ids(name="container") == [b["id"]]
    assert ids(limit=1, offset=1) == [a["id"]]
    bad = api.get("/tasks", token=api.root, params={"state": "sleeping"})
    assert bad.status_code == 422 and "state" in error(bad)


def test_users_see_their_own_and_their_spaces_tasks_and_only_owners_cancel(api: Api) -> None:
    alice, alice_token = api.submitter("alice")
    _, bob_token = api.submitter("bob")
    space = api.post("/spaces", token=alice_token, json={"name": "climate"})
    assert space.status_code == 201, space.text
    space_id = space.json()["id"]
    mine = submit(api, alice_token)
    assert mine["owner"] == alice["id"]
    in_space = submit(api, alice_token, space=space_id)
    forbidden = api.post("/tasks", token=bob_token, json={**SHELL, "space": space_id})
    assert forbidden.status_code == 403
    assert api.get(f"/tasks/{mine['id']}", token=bob_token).status_code == 403
    assert api.get("/tasks", token=bob_token).json()["total"] == 0
    assert api.get("/tasks/999999", token=bob_token).status_code == 404
    assert api.post(f"/tasks/{mine['id']}/cancel", token=bob_token).status_code == 403
    assert api.get("/tasks", token=alice_token).json()["total"] == 2
    assert api.get(f"/tasks/{in_space['id']}", token=api.root).status_code == 200
    assert api.post(f"/tasks/{mine['id']}/cancel", token=alice_token).json()["state"] == "cancelled"
    again = api.post(f"/tasks/{mine['id']}/cancel", token=alice_token)
    assert again.status_code == 409


def test_a_user_lists_exactly_the_tasks_it_may_read_one_by_one(api: Api) -> None:
    """The list rule (access.visible_owned) is the read rule (see_owned) seen from the other
    side: own tasks and the tasks of one's spaces, whoever submitted them; no filter widens it."""
    alice, alice_token = api.submitter("alice")
    bob, bob_token = api.submitter("bob")
    space_id = api.post("/spaces", token=alice_token, json={"name": "ocean"}).json()["id"]
    join(api, alice_token, "spaces", space_id, bob["id"])
    private = submit(api, alice_token)
    shared = submit(api, alice_token, space=space_id)
    own = submit(api, bob_token)
    listed = lambda token, **p: {t["id"] for t in api.get("/tasks", token=token, params=p).json()["items"]}  # noqa: E731
    assert listed(bob_token) == {shared["id"], own["id"]}
    assert listed(bob_token, owner=alice["id"]) == {shared["id"]}
    assert listed(alice_token) == {private["id"], shared["id"]}
    assert listed(api.root) == {private["id"], shared["id"], own["id"]}
    assert api.get("/tasks/counts", token=bob_token).json()["total"] == 2
    for task in (private, shared, own):
        readable = api.get(f"/tasks/{task['id']}", token=bob_token).status_code == 200
        assert readable == (task["id"] in listed(bob_token))


def test_cancelling_an_active_task_requests_a_kill(api: Api) -> None:
    register(api, "n1")
    task = submit(api)
    claim("test", 1)
    resp = api.post(f"/tasks/{task['id']}/cancel", token=api.root)
    assert resp.status_code == 200
    body = resp.json()
    assert body["state"] == "assigned" and body["cancel_requested"] is True
    reasons = [e["reason"] for e in api.get(f"/tasks/{task['id']}/events", token=api.root).json()]
    assert any(r.startswith("cancel requested by root") for r in reasons)
    hb = SignedNode(api, "n1", NODES_SECRET).heartbeat()
    assert hb.json()["cancel"] == [task["id"]]


def test_unauthenticated_and_provider_callers_are_refused(api: Api) -> None:
    assert api.post("/tasks", json=SHELL).status_code == 401
    assert api.get("/tasks").status_code == 401
    assert api.get("/inventory").status_code == 401

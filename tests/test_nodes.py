"""Node registry over real HTTP on both databases: signed registration and heartbeats,
node authentication (forged, stale, replayed), admin controls and liveness."""

from __future__ import annotations

import time

import pytest

from control.core.config import Settings
from control.core.db import connection
from control.farm.models import Node, Nonce
from control.farm.reaper import reap
from tests.conftest import NODES_SECRET
from tests.support.client import Api
from tests.support.nodes import SignedNode


@pytest.fixture
def wk1(api: Api) -> SignedNode:
    return SignedNode(api, "wk1", NODES_SECRET)


def test_register_is_idempotent_and_updates(api: Api, wk1: SignedNode) -> None:
    first = wk1.register()
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["state"] == "online" and body["queues"] == ["default"] and body["running"] == 0
    assert body["free"] == 2 and body["ansible_connection"] == "local"
    again = wk1.register(pid=5555, queues=["default", "large"], concurrency=4)
    assert again.status_code == 200, again.text
    assert again.json()["pid"] == 5555 and again.json()["queues"] == ["default", "large"]
    listing = api.get("/nodes", token=api.root).json()
    assert listing["total"] == 1 and listing["items"][0]["concurrency"] == 4


def test_register_validates_fields(wk1: SignedNode) -> None:
    resp = wk1.register(ansible_host="bad host; rm -rf /")
    assert resp.status_code == 422 and "ansible_host" in resp.json()["error"]["message"]
    resp = wk1.register(workdir="relative/path")
    assert resp.status_code == 422 and "workdir" in resp.json()["error"]["message"]
    resp = wk1.register(concurrency=0)
    assert resp.status_code == 422 and "concurrency" in resp.json()["error"]["message"]
    resp = wk1.register(queues=["ok", "not ok"])
    assert resp.status_code == 422 and "queues" in resp.json()["error"]["message"]


def test_node_may_only_speak_for_itself(api: Api, wk1: SignedNode) -> None:
    assert wk1.register().status_code == 201
    other = SignedNode(api, "wk2", NODES_SECRET)
    resp = other.request("POST", "/nodes/register", wk1.registration())
    assert resp.status_code == 403
    resp = other.request("POST", "/nodes/wk1/heartbeat", {})
    assert resp.status_code == 403


def test_forged_stale_replayed_and_unsigned_requests_are_refused(api: Api, wk1: SignedNode) -> None:
    forged = wk1.request("POST", "/nodes/register", wk1.registration(), key="not-the-nodes-key-xx")
    assert forged.status_code == 401 and "bad signature" in forged.json()["error"]["message"]
    stale = wk1.request("POST", "/nodes/register", wk1.registration(), timestamp=int(time.time()) - 301)
    assert stale.status_code == 401 and "window" in stale.json()["error"]["message"]
    future = wk1.request("POST", "/nodes/register", wk1.registration(), timestamp=int(time.time()) + 400)
    assert future.status_code == 401
    unsigned = api.post("/nodes/register", json=wk1.registration())
    assert unsigned.status_code == 401 and "missing" in unsigned.json()["error"]["message"]
    bearer = api.post("/nodes/register", json=wk1.registration(), token=api.root)
    assert bearer.status_code == 401
    ok = wk1.register()
    assert ok.status_code == 201
    replay = wk1.replay("POST", "/nodes/register")
    assert replay.status_code == 401 and "replay" in replay.json()["error"]["message"]
    # the body is covered by the signature: same headers, different body
    tampered = api.request("POST", "/nodes/register", data=wk1.last_body.replace(b'"concurrency": 2',
                                                                                   b'"concurrency": 9'),
                           headers={**wk1.last_headers, "X-Zonefarm-Nonce": "f" * 32})
    assert tampered.status_code == 401
    for resp in (forged, stale, unsigned, replay, tampered, ok):
        assert NODES_SECRET not in resp.text


def test_heartbeat_keeps_node_online_and_reaper_marks_silent_node_lost(api: Api, wk1: SignedNode,
                                                                      settings: Settings) -> None:
    assert wk1.register().status_code == 201
    hb = wk1.heartbeat(pid=77, resources={"cpu": 8})
    assert hb.status_code == 200, hb.text
    assert hb.json()["node"]["pid"] == 77 and hb.json()["cancel"] == []
    with connection():
        Node.update(last_seen=time.time() - settings.node_lease - 5).where(Node.name == "wk1").execute()
        reap(settings)
    node = api.get("/nodes/wk1", token=api.root).json()
    assert node["state"] == "lost" and node["free"] == 0
    assert api.get("/nodes", token=api.root, params={"state": "lost"}).json()["total"] == 1
    assert wk1.heartbeat().status_code == 200
    assert api.get("/nodes/wk1", token=api.root).json()["state"] == "online"


def test_heartbeat_for_unknown_node_is_404(wk1: SignedNode) -> None:
    assert wk1.heartbeat().status_code == 404


def test_admin_cordon_drain_uncordon_deregister(api: Api, wk1: SignedNode) -> None:
    assert wk1.register().status_code == 201
    _, token = api.user_with_token("ursula")
    assert api.get("/nodes", token=token).status_code == 200
    assert api.post("/nodes/wk1/cordon", token=token).status_code == 403
    assert api.delete("/nodes/wk1", token=token).status_code == 403
    cordoned = api.post("/nodes/wk1/cordon", token=api.root).json()
    assert cordoned["cordoned"] and not cordoned["draining"] and cordoned["free"] == 0
    drained = api.post("/nodes/wk1/drain", token=api.root).json()
    assert drained["cordoned"] and drained["draining"] and drained["drained"]
    assert api.get("/nodes", token=api.root, params={"cordoned": "true"}).json()["total"] == 1
    back = api.post("/nodes/wk1/uncordon", token=api.root).json()
    assert not back["cordoned"] and not back["draining"] and back["free"] == 2
    assert api.post("/nodes/ghost/cordon", token=api.root).status_code == 404
    assert api.delete("/nodes/wk1", token=api.root).status_code == 204
    assert api.get("/nodes/wk1", token=api.root).status_code == 404
    assert api.get("/nodes", token=api.root).json()["total"] == 0
    assert api.delete("/nodes/wk1", token=api.root).status_code == 404
    # deregistering revoked its key; registering again with the next generation's brings it back
    revoked = wk1.register()
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    assert wk1.with_generation(1).register().status_code == 200
    assert api.get("/nodes/wk1", token=api.root).json()["state"] == "online"


def test_list_filters(api: Api) -> None:
    for name, region, queues in (("a1", "eu", ["default"]), ("a2", "eu", ["large"]), ("b1", "us", ["default"])):
        assert SignedNode(api, name, NODES_SECRET).register(region=region, queues=queues).status_code == 201
    names = lambda **p: [n["name"] for n in api.get("/nodes", token=api.root, params=p).json()["items"]]  # noqa: E731
    assert names(region="eu") == ["a1", "a2"]
    assert names(queue="default") == ["a1", "b1"]
    assert names(name="a") == ["a1", "a2"]
    assert names(limit=1, offset=1) == ["a2"]
    bad = api.get("/nodes", token=api.root, params={"state": "sleepy"})
    assert bad.status_code == 422 and "state" in bad.json()["error"]["message"]


def test_old_nonces_are_pruned(api: Api, wk1: SignedNode, settings: Settings,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The API prunes nonces too old to pass the timestamp check, at most once a minute."""
    from control.web import nodeauth

    assert wk1.register().status_code == 201
    with connection():
        assert Nonce.select().count() == 1
        Nonce.update(ts=time.time() - 3 * settings.callback_skew).execute()
    monkeypatch.setattr(nodeauth, "_last_prune", 0.0)
    assert wk1.register().status_code == 200
    with connection():
        assert Nonce.select().count() == 1  # the old one went, the new one stays
        assert Nonce.select().where(Nonce.ts < time.time() - settings.callback_skew).count() == 0

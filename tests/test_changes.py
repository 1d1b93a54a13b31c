"""The change feed over real HTTP on both databases: numbering, filtering per reader, resume, long-poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import own_server
from tests.support.client import Api
from tests.support.registry import MIB, error, group, join, provider, resize, space, support


def feed(api: Api, token: str, since: int = 0, **params: Any) -> dict[str, Any]:
    resp = api.get("/changes", token=token, params={"since": since, **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_every_registry_write_appends_a_numbered_change(api: Api) -> None:
    alice, at = api.user_with_token("alice")
    start = feed(api, api.root)["last_seq"]
    g = group(api, at, "lab")
    s = space(api, at, "climate")
    api.patch(f"/spaces/{s['id']}", token=at, json={"name": "climate2"})
    api.put(f"/spaces/{s['id']}/groups/{g['id']}", token=at, json={"role": "member"})
    p, _ = provider(api, "prov1")
    support(api, at, s["id"], p["id"])
    resize(api, s["id"], p["id"], 2 * MIB)
    api.delete(f"/spaces/{s['id']}/providers/{p['id']}", token=at)
    api.delete(f"/groups/{g['id']}", token=at)
    body = feed(api, api.root, start)
    ops = [(c["entity"], c["op"]) for c in body["changes"]]
    # support tokens are credentials, like provider tokens: the support they lead to is the change
    assert ops == [("group", "create"), ("group_user", "create"), ("space", "create"),
                   ("space_user", "create"), ("space", "update"), ("space_group", "create"),
                   ("provider", "create"), ("support", "create"), ("support", "update"),
                   ("support", "delete"), ("space_group", "delete"), ("group", "delete")]
    seqs = [c["seq"] for c in body["changes"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and body["last_seq"] == seqs[-1]
    by_op = {(c["entity"], c["op"]): c for c in body["changes"]}
    assert by_op[("space", "update")]["data"] == {"name": "climate2"}
    assert by_op[("support", "update")]["data"]["size"] == 2 * MIB
    assert by_op[("support", "create")]["provider_id"] == p["id"]
    assert by_op[("group_user", "create")]["user_id"] == alice["id"]
    # a failed write appends nothing
    api.post("/spaces", token=at, json={"name": "climate2"})
    assert feed(api, api.root, body["last_seq"])["changes"] == []


def _region_world(api: Api) -> dict[str, Any]:
    """Two spaces, each supported by its own provider, a shared user and a nested group."""
    owner, ot = api.user_with_token("olga")
    w: dict[str, Any] = {"ot": ot, "owner": owner}
    w["s1"] = space(api, ot, "s1")["id"]
    w["s2"] = space(api, ot, "s2")["id"]
    w["g"] = group(api, ot, "lab")["id"]
    w["child"] = group(api, ot, "lab-sub")["id"]
    w["lone"] = group(api, ot, "lone")["id"]
    api.put(f"/groups/{w['g']}/children/{w['child']}", token=ot)
    api.put(f"/spaces/{w['s1']}/groups/{w['g']}", token=ot, json={"role": "member"})
    w["p1"], w["t1"] = provider(api, "prov1")
    w["p2"], w["t2"] = provider(api, "prov2")
    support(api, ot, w["s1"], w["p1"]["id"])
    support(api, ot, w["s2"], w["p2"]["id"])
    return w


def test_provider_sees_only_its_region(api: Api) -> None:
    w = _region_world(api)
    ot, s1, s2 = w["ot"], w["s1"], w["s2"]
    p1, p2 = w["p1"]["id"], w["p2"]["id"]
    mark = feed(api, w["t1"])["last_seq"]
    inside = api.make_user("inside")
    outside = api.make_user("outside")
    join(api, ot, "groups", w["child"], inside["id"])          # group nested in s1
    join(api, ot, "spaces", s2, outside["id"])                   # s2 only
    join(api, ot, "groups", w["lone"], outside["id"])            # group in no space
    api.patch(f"/spaces/{s1}", token=ot, json={"name": "s1-renamed"})
    api.patch(f"/spaces/{s2}", token=ot, json={"name": "s2-renamed"})
    api.patch(f"/providers/{p2}", token=api.root, json={"storage_path": "/srv/p2"})
    api.patch(f"/providers/{p1}", token=api.root, json={"storage_path": "/srv/p1"})
    support(api, ot, s1, p2)                                     # p2 also supports s1
    resize(api, s1, p1, 4 * MIB)
    api.patch(f"/users/{inside['id']}", token=api.root, json={"full_name": "In Side"})
    api.patch(f"/users/{outside['id']}", token=api.root, json={"full_name": "Out Side"})
    everything = feed(api, api.root, mark)
    mine = feed(api, w["t1"], mark)
    got = {(c["entity"], c["op"], c["space_id"], c["group_id"], c["user_id"], c["provider_id"])
           for c in mine["changes"]}
    assert got == {
        # the region is judged as it is now: "inside" is in it, so its creation shows too
        ("user", "create", None, None, inside["id"], None),
        ("group_user", "create", None, w["child"], inside["id"], None),
        ("space", "update", s1, None, None, None),
        ("provider", "update", None, None, None, p1),
        ("support", "update", s1, None, None, p1),
        ("user", "update", None, None, inside["id"], None),
    }
    assert len(everything["changes"]) > len(mine["changes"])
    assert mine["last_seq"] == everything["last_seq"]  # filtered-out changes are covered too
    theirs = {(c["entity"], c["op"], c["space_id"], c["provider_id"]) for c in feed(api, w["t2"], mark)["changes"]}
    assert ("space", "update", s2, None) in theirs and ("support", "create", s1, p2) in theirs
    assert ("support", "update", s1, p1) not in theirs and ("provider", "update", None, p1) not in theirs


def test_provider_sees_its_revocation_and_nothing_after(api: Api) -> None:
    w = _region_world(api)
    ot, s1, p1 = w["ot"], w["s1"], w["p1"]["id"]
    mark = feed(api, w["t1"])["last_seq"]
    assert api.delete(f"/spaces/{s1}/providers/{p1}", token=ot).status_code == 204
    api.patch(f"/spaces/{s1}", token=ot, json={"name": "after"})
    body = feed(api, w["t1"], mark)
    assert [(c["entity"], c["op"], c["space_id"], c["provider_id"]) for c in body["changes"]] == [
        ("support", "delete", s1, p1)]
    assert body["changes"][0]["data"]["space"] == s1


def test_provider_learns_space_deletion_and_member_departures(api: Api) -> None:
    w = _region_world(api)
    ot, s1, s2, p1, p2 = w["ot"], w["s1"], w["s2"], w["p1"]["id"], w["p2"]["id"]
    member = api.make_user("leaver")
    join(api, ot, "spaces", s1, member["id"])
    mark = feed(api, w["t1"])["last_seq"]
    assert api.delete(f"/users/{member['id']}", token=api.root).status_code == 204
    assert [(c["entity"], c["op"], c["user_id"]) for c in feed(api, w["t1"], mark)["changes"]] == [
        ("space_user", "delete", member["id"])]
    mark2 = feed(api, w["t2"])["last_seq"]
    assert api.delete(f"/spaces/{s2}", token=ot).status_code == 204
    revoked = feed(api, w["t2"], mark2)["changes"]
    assert [(c["entity"], c["op"], c["provider_id"]) for c in revoked] == [("support", "delete", p2)]
    assert revoked[0]["data"] == {"space": s2, "space_name": "s2", "provider": p2, "size": None}
    # deleting a provider revokes its supports, in the feed of the spaces' members too
    mark3 = feed(api, ot)["last_seq"]
    assert api.delete(f"/providers/{p1}", token=api.root).status_code == 204
    gone = feed(api, ot, mark3)["changes"]
    assert [(c["entity"], c["op"], c["space_id"], c["provider_id"]) for c in gone] == [
        ("support", "delete", s1, p1)]


def test_user_sees_its_spaces_groups_and_itself(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    me, mt = api.user_with_token("mia")
    mine = space(api, ot, "mine")["id"]
    other = space(api, ot, "other")["id"]
    join(api, ot, "spaces", mine, me["id"])
    mark = feed(api, mt)["last_seq"]
    api.patch(f"/spaces/{mine}", token=ot, json={"name": "mine2"})
    api.patch(f"/spaces/{other}", token=ot, json={"name": "other2"})
    api.patch(f"/users/{me['id']}", token=mt, json={"full_name": "Mia"})
    p, _ = provider(api, "prov1")
    support(api, ot, mine, p["id"])
    got = [(c["entity"], c["op"], c["entity_id"]) for c in feed(api, mt, mark)["changes"]]
    assert [g[:2] for g in got] == [("space", "update"), ("user", "update"), ("support", "create")]
    assert got[0][2] == mine


def test_resume_pages_through_everything_exactly_once(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    for i in range(7):
        group(api, ot, f"g{i}")
    full = feed(api, api.root)["changes"]
    collected, since = [], 0
    for _ in range(20):
        page = feed(api, api.root, since, limit=3)
        assert len(page["changes"]) <= 3
        collected += page["changes"]
        if page["last_seq"] == since:
            break
        since = page["last_seq"]
    assert [c["seq"] for c in collected] == [c["seq"] for c in full]
    last = full[-1]["seq"]
    after = feed(api, api.root, last)
    assert after == {"changes": [], "last_seq": last}
    group(api, ot, "newest")
    assert [c["data"]["name"] for c in feed(api, api.root, last)["changes"] if c["entity"] == "group"] == ["newest"]


def test_long_poll_wakes_when_a_change_arrives(api: Api) -> None:
    w = _region_world(api)
    newcomer = api.make_user("newcomer")
    mark = feed(api, w["t1"])["last_seq"]
    poller = Api(api.base, api.root)  # its own session: requests.Session is not thread-safe
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(body=feed(poller, w["t1"], mark, timeout=8)))
    thread.start()
    time.sleep(0.5)  # let the poll start waiting (it passes either way; this makes it a wake-up)
    api.patch(f"/spaces/{w['s2']}", token=w["ot"], json={"name": "elsewhere"})  # not p1's: keeps waiting
    join(api, w["ot"], "spaces", w["s1"], newcomer["id"])
    thread.join(timeout=15)
    assert not thread.is_alive()
    changes = result["body"]["changes"]
    assert [(c["entity"], c["op"], c["user_id"]) for c in changes] == [("space_user", "create", newcomer["id"])]
    assert result["body"]["last_seq"] == changes[-1]["seq"]


def test_long_poll_returns_empty_when_nothing_changes(api: Api) -> None:
    _, pt = provider(api, "prov1")
    last = feed(api, api.root)["last_seq"]
    api.make_user("unrelated")  # outside the provider's region: the poll keeps waiting
    body = feed(api, pt, last, timeout=0.6)
    assert body["changes"] == [] and body["last_seq"] == last + 1


def test_long_poll_is_capped_by_changes_max_wait(db_url: str, tmp_path: Path) -> None:
    with own_server(db_url, tmp_path, changes_max_wait=1) as api:
        last = feed(api, api.root)["last_seq"]
        # asks for an hour; the client gives up after 15 s, so only the cap makes this pass
        body = api.get("/changes", token=api.root, params={"since": last, "timeout": 3600}, timeout=15).json()
        assert body == {"changes": [], "last_seq": last}


def test_waiting_polls_hold_no_database_connection(db_url: str, tmp_path: Path) -> None:
    """With a pool of 2 connections, 4 waiting polls leave room for writes (they would
    exhaust the pool, and the write would fail, if they held a connection while waiting)."""
    with own_server(db_url, tmp_path, db_pool_size=2, changes_max_polls_per_principal=4) as api:
        last = feed(api, api.root)["last_seq"]
        results: list[dict[str, Any]] = []
        pollers = [Api(api.base, api.root) for _ in range(4)]
        threads = [threading.Thread(target=lambda a=a: results.append(feed(a, a.root, last, timeout=8)))
                   for a in pollers]
        for t in threads:
            t.start()
        time.sleep(0.5)  # let them all start waiting
        made = api.post("/groups", token=api.root, json={"name": "while-waiting"}, timeout=5)
        assert made.status_code == 201, made.text
        for t in threads:
            t.join(timeout=15)
        assert len(results) == 4
        assert all([c["entity"] for c in r["changes"]] == ["group"] for r in results)


def test_changes_errors(api: Api) -> None:
    error(api.get("/changes"), 401)
    error(api.get("/changes", token="nope"), 401)
    assert "since" in error(api.get("/changes", token=api.root, params={"since": -1}), 422)
    assert "since" in error(api.get("/changes", token=api.root, params={"since": "x"}), 422)
    assert "timeout" in error(api.get("/changes", token=api.root, params={"timeout": "soon"}), 422)
    assert "limit" in error(api.get("/changes", token=api.root, params={"limit": 0}), 422)
    error(api.post("/changes", token=api.root, json={}), 405)
    # a position the feed never reached (a replaced database) is an error, not an endless wait
    top = feed(api, api.root)["last_seq"]
    assert "since" in error(api.get("/changes", token=api.root, params={"since": top + 5, "timeout": 5}), 409)

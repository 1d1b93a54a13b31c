"""Groups over real HTTP on both databases: CRUD, members and roles, nesting, effective users."""

from __future__ import annotations

import pytest

from tests.support.client import Api
from tests.support.registry import created, error, group, join


def test_creator_owns_group_and_strangers_do_not_see_it(api: Api) -> None:
    alice, at = api.user_with_token("alice")
    _, bt = api.user_with_token("bob")
    resp = api.post("/groups", token=at, json={"name": "lab-a"})
    g = created(resp)
    assert g["name"] == "lab-a" and g["role"] == "owner"
    assert resp.headers["Location"] == f"/api/v1/groups/{g['id']}"
    assert api.get(f"/groups/{g['id']}", token=at).json()["role"] == "owner"
    members = api.get(f"/groups/{g['id']}/users", token=at).json()
    assert [(m["id"], m["role"]) for m in members["items"]] == [(alice["id"], "owner")]
    assert api.get("/groups", token=at).json()["total"] == 1
    assert api.get("/groups", token=bt).json()["total"] == 0
    error(api.get(f"/groups/{g['id']}", token=bt), 403)
    assert api.get("/groups", token=api.root).json()["items"][0]["role"] is None


def test_root_creates_group_for_a_named_owner(api: Api) -> None:
    carol, ct = api.user_with_token("carol")
    g = created(api.post("/groups", token=api.root, json={"name": "ops", "owner": carol["id"]}))
    assert api.get(f"/groups/{g['id']}", token=ct).json()["role"] == "owner"
    msg = error(api.post("/groups", token=api.root, json={"name": "ops2", "owner": 9999}), 422)
    assert "owner" in msg
    error(api.post("/groups", token=ct, json={"name": "ops3", "owner": 9999}), 403)


def test_group_list_paginates_and_filters(api: Api) -> None:
    _, t = api.user_with_token("dave")
    for i in range(5):
        group(api, t, f"team-{i}")
    group(api, t, "other")
    page = api.get("/groups", token=t, params={"name": "team", "limit": 2, "offset": 2}).json()
    assert page["total"] == 5 and [g["name"] for g in page["items"]] == ["team-2", "team-3"]


@pytest.mark.parametrize("body,field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "bad/name"}, "name"),
    ({"name": "ok", "colour": "red"}, "colour"),
    ({"name": "ok", "owner": "x"}, "owner"),
])
def test_group_schema_errors_name_the_field(api: Api, body: dict, field: str) -> None:
    assert field in error(api.post("/groups", token=api.root, json=body), 422)


def test_duplicate_group_name_is_409(api: Api) -> None:
    group(api, api.root, "dup")
    other = group(api, api.root, "other")
    error(api.post("/groups", token=api.root, json={"name": "dup"}), 409)
    error(api.patch(f"/groups/{other['id']}", token=api.root, json={"name": "dup"}), 409)


def test_rename_and_delete_follow_roles(api: Api) -> None:
    owner, ot = api.user_with_token("olga")
    admin, at = api.user_with_token("adam")
    member, mt = api.user_with_token("mia")
    g = group(api, ot, "lab")
    join(api, ot, "groups", g["id"], admin["id"], "admin")
    join(api, ot, "groups", g["id"], member["id"])
    error(api.patch(f"/groups/{g['id']}", token=mt, json={"name": "x"}), 403)
    renamed = api.patch(f"/groups/{g['id']}", token=at, json={"name": "lab-renamed"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "lab-renamed"
    assert renamed.json()["role"] == "admin"
    error(api.delete(f"/groups/{g['id']}", token=at), 403)
    error(api.delete(f"/groups/{g['id']}", token=mt), 403)
    assert api.delete(f"/groups/{g['id']}", token=ot).status_code == 204
    error(api.get(f"/groups/{g['id']}", token=ot), 404)
    error(api.delete(f"/groups/{g['id']}", token=ot), 404)
    error(api.patch("/groups/424242", token=api.root, json={"name": "y"}), 404)


def test_member_management_and_role_rules(api: Api) -> None:
    owner, ot = api.user_with_token("owen")
    admin, at = api.user_with_token("ada")
    member, mt = api.user_with_token("max")
    extra = api.make_user("eve")
    g = group(api, ot, "crew")
    gid = g["id"]
    added = api.put(f"/groups/{gid}/users/{admin['id']}", token=ot, json={"role": "member"})
    assert added.status_code == 201 and added.json()["role"] == "member"
    promoted = api.put(f"/groups/{gid}/users/{admin['id']}", token=ot, json={"role": "admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    # an admin adds plain members but grants no admin or owner role
    assert api.put(f"/groups/{gid}/users/{member['id']}", token=at, json={}).status_code == 201
    error(api.put(f"/groups/{gid}/users/{extra['id']}", token=at, json={"role": "admin"}), 403)
    # a member adds nobody
    error(api.put(f"/groups/{gid}/users/{extra['id']}", token=mt, json={"role": "member"}), 403)
    error(api.put(f"/groups/{gid}/users/424242", token=ot, json={"role": "member"}), 404)
    assert "role" in error(api.put(f"/groups/{gid}/users/{extra['id']}", token=ot, json={"role": "boss"}), 422)
    # admins cannot remove admins; owners can; anyone can leave; the last owner cannot
    error(api.delete(f"/groups/{gid}/users/{owner['id']}", token=at), 403)
    assert api.delete(f"/groups/{gid}/users/{member['id']}", token=mt).status_code == 204
    error(api.delete(f"/groups/{gid}/users/{member['id']}", token=ot), 404)
    error(api.delete(f"/groups/{gid}/users/{owner['id']}", token=ot), 409)
    error(api.put(f"/groups/{gid}/users/{owner['id']}", token=ot, json={"role": "member"}), 409)
    assert api.delete(f"/groups/{gid}/users/{admin['id']}", token=ot).status_code == 204
    users = api.get(f"/groups/{gid}/users", token=ot).json()["items"]
    assert [(u["username"], u["role"]) for u in users] == [("owen", "owner")]


def test_nesting_and_cycles(api: Api) -> None:
    _, t = api.user_with_token("nina")
    a, b, c = (group(api, t, n)["id"] for n in ("a", "b", "c"))
    nested = api.put(f"/groups/{a}/children/{b}", token=t)
    assert nested.status_code == 201 and nested.json()["id"] == b
    assert api.put(f"/groups/{a}/children/{b}", token=t).status_code == 200
    assert api.put(f"/groups/{b}/children/{c}", token=t).status_code == 201
    assert "cycle" in error(api.put(f"/groups/{c}/children/{a}", token=t), 409)
    error(api.put(f"/groups/{b}/children/{a}", token=t), 409)
    error(api.put(f"/groups/{a}/children/{a}", token=t), 409)
    error(api.put(f"/groups/{a}/children/424242", token=t), 404)
    children = api.get(f"/groups/{a}/children", token=t).json()
    assert [ch["name"] for ch in children["items"]] == ["b"] and children["items"][0]["role"] is None
    assert api.delete(f"/groups/{a}/children/{b}", token=t).status_code == 204
    error(api.delete(f"/groups/{a}/children/{b}", token=t), 404)
    # with the link gone, the former cycle is allowed
    assert api.put(f"/groups/{c}/children/{a}", token=t).status_code == 201


def test_nesting_needs_admin_of_parent_and_membership_of_child(api: Api) -> None:
    _, ot = api.user_with_token("pia")
    _, st = api.user_with_token("sam")
    parent = group(api, ot, "parent")["id"]
    foreign = group(api, st, "foreign")["id"]
    error(api.put(f"/groups/{parent}/children/{foreign}", token=ot), 403)
    error(api.put(f"/groups/{foreign}/children/{parent}", token=ot), 403)


def test_effective_users_follow_nested_groups(api: Api) -> None:
    top_owner, t = api.user_with_token("tom")
    deep = api.make_user("dora")
    mid = api.make_user("mick")
    top, middle, bottom = (group(api, t, n)["id"] for n in ("top", "middle", "bottom"))
    api.put(f"/groups/{top}/children/{middle}", token=t)
    api.put(f"/groups/{middle}/children/{bottom}", token=t)
    join(api, t, "groups", bottom, deep["id"], "admin")
    join(api, t, "groups", middle, mid["id"])
    eff = api.get(f"/groups/{top}/effective_users", token=t).json()
    by_name = {u["username"]: u for u in eff["items"]}
    assert set(by_name) == {"tom", "dora", "mick"} and eff["total"] == 3
    assert by_name["tom"]["direct"] is True and by_name["tom"]["role"] == "owner"
    assert by_name["dora"]["direct"] is False and by_name["dora"]["role"] == "member"
    assert by_name["dora"]["membership"] == [[middle, bottom]]
    assert by_name["mick"]["membership"] == [[middle]]
    filtered = api.get(f"/groups/{top}/effective_users", token=t, params={"name": "do"}).json()
    assert [u["username"] for u in filtered["items"]] == ["dora"]
    # an effective member may read the parent but has no admin right there
    dt = api.login("dora")
    assert api.get(f"/groups/{top}", token=dt).json()["role"] == "member"
    error(api.patch(f"/groups/{top}", token=dt, json={"name": "hijack"}), 403)
    assert top in {g["id"] for g in api.get("/groups", token=dt).json()["items"]}
    assert top_owner["id"] in {u["id"] for u in eff["items"]}

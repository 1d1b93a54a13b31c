"""Spaces over real HTTP on both databases: CRUD, users, groups, effective users, support."""

from __future__ import annotations

import pytest

from tests.support.client import Api
from tests.support.registry import MIB, created, error, group, join, provider, resize, space, support, support_token


def test_creator_owns_space_and_lists_show_roles(api: Api) -> None:
    alice, at = api.user_with_token("alice")
    _, bt = api.user_with_token("bob")
    resp = api.post("/spaces", token=at, json={"name": "climate"})
    s = created(resp)
    assert s["role"] == "owner" and resp.headers["Location"] == f"/api/v1/spaces/{s['id']}"
    users = api.get(f"/spaces/{s['id']}/users", token=at).json()["items"]
    assert [(u["id"], u["role"]) for u in users] == [(alice["id"], "owner")]
    assert [x["role"] for x in api.get("/spaces", token=at).json()["items"]] == ["owner"]
    assert api.get("/spaces", token=bt).json()["total"] == 0
    error(api.get(f"/spaces/{s['id']}", token=bt), 403)
    error(api.get("/spaces/424242", token=bt), 404)
    root_view = api.get(f"/spaces/{s['id']}", token=api.root).json()
    assert root_view["name"] == "climate" and root_view["role"] is None


def test_space_list_paginates_and_filters(api: Api) -> None:
    for i in range(4):
        space(api, api.root, f"proj-{i}")
    space(api, api.root, "misc")
    page = api.get("/spaces", token=api.root, params={"name": "PROJ", "limit": 3}).json()
    assert page["total"] == 4 and len(page["items"]) == 3


@pytest.mark.parametrize("body,field", [({}, "name"), ({"name": "x" * 101}, "name"),
                                        ({"name": "ok", "size": 3}, "size")])
def test_space_schema_errors_name_the_field(api: Api, body: dict, field: str) -> None:
    assert field in error(api.post("/spaces", token=api.root, json=body), 422)


def test_space_duplicate_rename_and_delete(api: Api) -> None:
    owner, ot = api.user_with_token("olga")
    member, mt = api.user_with_token("mia")
    admin, at = api.user_with_token("adam")
    s = space(api, ot, "one")["id"]
    space(api, ot, "two")
    error(api.post("/spaces", token=ot, json={"name": "one"}), 409)
    error(api.patch(f"/spaces/{s}", token=ot, json={"name": "two"}), 409)
    join(api, ot, "spaces", s, member["id"])
    join(api, ot, "spaces", s, admin["id"], "admin")
    error(api.patch(f"/spaces/{s}", token=mt, json={"name": "x"}), 403)
    assert api.patch(f"/spaces/{s}", token=at, json={"name": "uno"}).json()["name"] == "uno"
    # a plain member cannot add members nor delete the space; an admin cannot delete it either
    extra = api.make_user("eve")
    error(api.put(f"/spaces/{s}/users/{extra['id']}", token=mt, json={"role": "member"}), 403)
    error(api.delete(f"/spaces/{s}", token=mt), 403)
    error(api.delete(f"/spaces/{s}", token=at), 403)
    assert api.delete(f"/spaces/{s}", token=ot).status_code == 204
    error(api.get(f"/spaces/{s}", token=api.root), 404)


def test_space_users_roles(api: Api) -> None:
    owner, ot = api.user_with_token("owen")
    admin, at = api.user_with_token("ada")
    member, mt = api.user_with_token("max")
    s = space(api, ot, "sp")["id"]
    join(api, ot, "spaces", s, admin["id"], "admin")
    assert api.put(f"/spaces/{s}/users/{member['id']}", token=at, json={}).status_code == 201
    error(api.put(f"/spaces/{s}/users/{member['id']}", token=at, json={"role": "owner"}), 403)
    assert api.put(f"/spaces/{s}/users/{member['id']}", token=ot, json={"role": "owner"}).json()["role"] == "owner"
    # two owners now: one may step down
    assert api.put(f"/spaces/{s}/users/{owner['id']}", token=ot, json={"role": "member"}).status_code == 200
    error(api.delete(f"/spaces/{s}/users/{member['id']}", token=at), 403)
    error(api.delete(f"/spaces/{s}/users/{member['id']}", token=mt), 409)  # last owner
    assert api.delete(f"/spaces/{s}/users/{admin['id']}", token=at).status_code == 204  # leaves
    error(api.delete(f"/spaces/{s}/users/424242", token=mt), 404)
    names = [(u["username"], u["role"]) for u in api.get(f"/spaces/{s}/users", token=mt).json()["items"]]
    assert names == [("owen", "member"), ("max", "owner")]


def test_space_groups_and_effective_users(api: Api) -> None:
    owner, ot = api.user_with_token("sofia")
    lead, lt = api.user_with_token("lead")
    deep = api.make_user("deep")
    s = space(api, ot, "climate")["id"]
    g = group(api, lt, "lab")["id"]
    child = group(api, lt, "sub")["id"]
    api.put(f"/groups/{g}/children/{child}", token=lt)
    join(api, lt, "groups", child, deep["id"])
    # the space owner is no member of the group: adding it takes the group's consent
    error(api.put(f"/spaces/{s}/groups/{g}", token=ot, json={"role": "member"}), 403)
    join(api, ot, "spaces", s, lead["id"], "admin")
    error(api.put(f"/spaces/{s}/groups/{g}", token=lt, json={"role": "admin"}), 403)  # admin grants no admin
    added = api.put(f"/spaces/{s}/groups/{g}", token=lt, json={"role": "member"})
    assert added.status_code == 201 and added.json() == {"id": g, "name": "lab", "role": "member"}
    assert "role" in error(api.put(f"/spaces/{s}/groups/{g}", token=lt, json={"role": "owner"}), 422)
    error(api.put(f"/spaces/{s}/groups/424242", token=lt, json={}), 404)
    listed = api.get(f"/spaces/{s}/groups", token=ot).json()["items"]
    assert [(x["id"], x["role"]) for x in listed] == [(g, "member")]
    eff = {u["username"]: u for u in api.get(f"/spaces/{s}/effective_users", token=ot).json()["items"]}
    assert set(eff) == {"sofia", "lead", "deep"}
    assert eff["deep"] == {"id": deep["id"], "username": "deep", "full_name": "", "role": "member",
                           "direct": False, "membership": [[g, child]]}
    assert eff["lead"]["direct"] is True and eff["lead"]["role"] == "admin"
    assert eff["lead"]["membership"] == [[g], [g, child]]  # lead created (so is in) both groups
    # the nested user reaches the space; as the group becomes admin, so does the user
    dt = api.login("deep")
    assert api.get(f"/spaces/{s}", token=dt).json()["role"] == "member"
    error(api.patch(f"/spaces/{s}", token=dt, json={"name": "x"}), 403)
    assert api.put(f"/spaces/{s}/groups/{g}", token=ot, json={"role": "admin"}).status_code == 200
    assert api.patch(f"/spaces/{s}", token=dt, json={"name": "climate2"}).status_code == 200
    assert api.get("/spaces", token=dt).json()["items"][0]["role"] == "admin"
    error(api.delete(f"/spaces/{s}/groups/{g}", token=lt), 403)  # an admin group: owner only
    assert api.delete(f"/spaces/{s}/groups/{g}", token=ot).status_code == 204
    error(api.delete(f"/spaces/{s}/groups/{g}", token=ot), 404)
    error(api.get(f"/spaces/{s}", token=dt), 403)


def test_support_token_redeem_resize_list_revoke(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    member, mt = api.user_with_token("mia")
    s = space(api, ot, "data")["id"]
    join(api, ot, "spaces", s, member["id"])
    p, pt = provider(api, "prov1")
    ticket = support_token(api, ot, s, provider=p["id"], size=MIB)
    redeem = f"/providers/{p['id']}/supports"
    assert "size" in error(api.post(redeem, token=pt, json={"token": ticket, "size": MIB - 1}), 422)
    assert "token" in error(api.post(redeem, token=pt, json={}), 422)
    error(api.post(redeem, token=mt, json={"token": ticket}), 403)          # users do not redeem
    error(api.post("/providers/424242/supports", token=api.root, json={"token": ticket}), 404)
    error(api.post(redeem, token=pt, json={"token": "zfs_nope"}), 404)
    error(api.post(f"/spaces/{s}/support_tokens", token=mt, json={}), 403)  # members do not ask
    error(api.post("/spaces/424242/support_tokens", token=ot, json={}), 404)
    made = api.post(redeem, token=pt, json={"token": ticket})  # the size the token asks for
    assert made.status_code == 201 and made.headers["Location"] == f"/api/v1/providers/{p['id']}/spaces/{s}"
    assert made.json()["size"] == MIB and made.json()["provider_name"] == "prov1"
    assert made.json()["space_name"] == "data"
    assert resize(api, s, p["id"], 5 * MIB, pt)["size"] == 5 * MIB
    listed = api.get(f"/spaces/{s}/providers", token=mt).json()
    assert [(x["provider_id"], x["size"]) for x in listed["items"]] == [(p["id"], 5 * MIB)]
    assert api.get(f"/spaces/{s}/providers/{p['id']}", token=mt).json()["size"] == 5 * MIB
    assert api.get(f"/providers/{p['id']}", token=mt).json()["granted"] == 5 * MIB
    error(api.delete(f"/spaces/{s}/providers/{p['id']}", token=mt), 403)
    assert api.delete(f"/spaces/{s}/providers/{p['id']}", token=ot).status_code == 204
    error(api.delete(f"/spaces/{s}/providers/{p['id']}", token=ot), 404)
    error(api.get(f"/spaces/{s}/providers/{p['id']}", token=ot), 404)
    assert api.get(f"/spaces/{s}/providers", token=ot).json()["total"] == 0


def test_provider_side_of_support(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "data")["id"]
    other = space(api, ot, "other")["id"]
    p, pt = provider(api, "prov1")
    q, qt = provider(api, "prov2")
    # a provider cannot start a support on the old route, nor touch another provider's
    error(api.put(f"/spaces/{s}/providers/{p['id']}", token=pt, json={"size": MIB}), 403)
    support(api, ot, s, p["id"], provider_token=pt)
    support(api, ot, s, q["id"], provider_token=qt)
    error(api.put(f"/spaces/{s}/providers/{q['id']}", token=pt, json={"size": 2 * MIB}), 403)
    error(api.delete(f"/spaces/{s}/providers/{q['id']}", token=pt), 403)
    error(api.put(f"/providers/{q['id']}/spaces/{s}", token=pt, json={"size": 2 * MIB}), 403)
    error(api.delete(f"/providers/{q['id']}/spaces/{s}", token=pt), 403)
    # it reads what it supports, resizes (here or on the old route) and revokes its own support
    assert api.get(f"/spaces/{s}", token=pt).status_code == 200
    error(api.get(f"/spaces/{other}", token=pt), 403)
    assert api.put(f"/spaces/{s}/providers/{p['id']}", token=pt, json={"size": 3 * MIB}).json()["size"] == 3 * MIB
    mine = api.get(f"/providers/{p['id']}/spaces", token=pt).json()["items"]
    assert [(x["space_id"], x["space_name"], x["size"]) for x in mine] == [(s, "data", 3 * MIB)]
    assert api.get(f"/providers/{p['id']}/spaces/{s}", token=pt).json()["size"] == 3 * MIB
    error(api.get(f"/providers/{p['id']}/spaces/{other}", token=pt), 404)
    error(api.put(f"/providers/{p['id']}/spaces/{other}", token=pt, json={"size": MIB}), 404)
    error(api.get(f"/providers/{q['id']}/spaces", token=pt), 403)
    assert api.delete(f"/providers/{p['id']}/spaces/{s}", token=pt).status_code == 204
    error(api.get(f"/spaces/{s}", token=pt), 403)
    assert api.get(f"/providers/{p['id']}/spaces", token=pt).json()["total"] == 0
    # root revokes on the provider's behalf
    assert api.delete(f"/providers/{q['id']}/spaces/{s}", token=api.root).status_code == 204
    assert api.get(f"/spaces/{s}/providers", token=ot).json()["total"] == 0


def test_deleting_a_space_drops_its_support(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "gone")["id"]
    p, _ = provider(api, "prov1")
    support(api, ot, s, p["id"])
    assert api.delete(f"/spaces/{s}", token=ot).status_code == 204
    assert api.get(f"/providers/{p['id']}/spaces", token=api.root).json()["total"] == 0

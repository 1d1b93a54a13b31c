"""The effective relations (Onezone's meaning: reached through nested groups), over real HTTP
on both databases: parents and effective parents and children, a user's effective groups and
spaces, and every chain of intermediaries between a space or group and one of its users."""

from __future__ import annotations

from typing import Any

import pytest

from control.core.db import connection
from control.registry.models import Group, GroupChild, GroupUser, Space, SpaceGroup, User
from tests.support.client import Api
from tests.support.registry import created, error, join, provider, support


def ids(page: dict[str, Any]) -> list[int]:
    return [x["id"] for x in page["items"]]


def chains(page: dict[str, Any]) -> list[list[tuple[str, str]]]:
    return [[(link["type"], link["name"]) for link in chain] for chain in page["items"]]


@pytest.fixture
def diamond(api: Api) -> dict[str, Any]:
    """Space S holds group A; A holds B and C, which both hold D; dora is in D (two paths).
    P holds A and is in space T; eve is a direct member of S only; bob is in nothing."""
    w: dict[str, Any] = {}
    for name in ("dora", "eve", "bob"):
        w[name], w[name + "_t"] = api.user_with_token(name)
    for name in ("A", "B", "C", "D", "P"):
        w[name] = created(api.post("/groups", token=api.root, json={"name": name}))["id"]
    for name in ("S", "T"):
        w[name] = created(api.post("/spaces", token=api.root, json={"name": name}))["id"]
    for parent, child in (("A", "B"), ("A", "C"), ("B", "D"), ("C", "D"), ("P", "A")):
        assert api.put(f"/groups/{w[parent]}/children/{w[child]}", token=api.root).status_code == 201
    api.put(f"/spaces/{w['S']}/groups/{w['A']}", token=api.root, json={"role": "member"})
    api.put(f"/spaces/{w['T']}/groups/{w['P']}", token=api.root, json={"role": "admin"})
    join(api, api.root, "groups", w["D"], w["dora"]["id"])
    join(api, api.root, "spaces", w["S"], w["eve"]["id"])
    return w


def test_both_chains_of_a_diamond_are_listed(api: Api, diamond: dict[str, Any]) -> None:
    w = diamond
    path = f"/spaces/{w['S']}/effective_users/{w['dora']['id']}/membership"
    page = api.get(path, token=w["eve_t"]).json()  # any member of the space may ask
    assert page["total"] == 2
    assert chains(page) == [[("space", "S"), ("group", "A"), ("group", "B"), ("group", "D"), ("user", "dora")],
                            [("space", "S"), ("group", "A"), ("group", "C"), ("group", "D"), ("user", "dora")]]
    assert [link["id"] for link in page["items"][0]] == [w["S"], w["A"], w["B"], w["D"], w["dora"]["id"]]
    second = api.get(path, token=api.root, params={"limit": 1, "offset": 1}).json()
    assert second["total"] == 2 and chains(second) == chains(page)[1:]
    assert api.get(path, token=api.root, params={"offset": 5}).json()["items"] == []
    assert "offset" in error(api.get(path, token=api.root, params={"offset": 2**40}), 422)
    # a direct member's chain has no group; through a group it is the group's chain
    eve = api.get(f"/spaces/{w['S']}/effective_users/{w['eve']['id']}/membership", token=api.root).json()
    assert chains(eve) == [[("space", "S"), ("user", "eve")]]
    in_a = api.get(f"/groups/{w['A']}/effective_users/{w['dora']['id']}/membership", token=w["dora_t"]).json()
    assert chains(in_a) == [[("group", "A"), ("group", "B"), ("group", "D"), ("user", "dora")],
                            [("group", "A"), ("group", "C"), ("group", "D"), ("user", "dora")]]
    via_t = api.get(f"/spaces/{w['T']}/effective_users/{w['dora']['id']}/membership", token=api.root).json()
    assert [len(c) for c in via_t["items"]] == [6, 6] and via_t["items"][0][1]["name"] == "P"
    # not a member: 404; not allowed to read the space: 403
    error(api.get(f"/spaces/{w['S']}/effective_users/{w['bob']['id']}/membership", token=api.root), 404)
    error(api.get(f"/spaces/{w['S']}/effective_users/424242/membership", token=api.root), 404)
    error(api.get(path, token=w["bob_t"]), 403)
    error(api.get(f"/groups/{w['A']}/effective_users/{w['dora']['id']}/membership", token=w["eve_t"]), 403)


def test_parents_and_effective_parents_and_children(api: Api, diamond: dict[str, Any]) -> None:
    w = diamond
    dt = w["dora_t"]
    assert ids(api.get(f"/groups/{w['D']}/parents", token=dt).json()) == [w["B"], w["C"]]
    assert ids(api.get(f"/groups/{w['A']}/parents", token=dt).json()) == [w["P"]]
    up = api.get(f"/groups/{w['D']}/effective_parents", token=dt).json()
    assert [(g["name"], g["direct"]) for g in up["items"]] == [("A", False), ("B", True), ("C", True), ("P", False)]
    down = api.get(f"/groups/{w['A']}/effective_children", token=dt).json()
    assert [(g["name"], g["direct"]) for g in down["items"]] == [("B", True), ("C", True), ("D", False)]
    assert api.get(f"/groups/{w['D']}/effective_children", token=dt).json()["total"] == 0
    named = api.get(f"/groups/{w['D']}/effective_parents", token=dt, params={"name": "p", "limit": 1}).json()
    assert named["total"] == 1 and ids(named) == [w["P"]]
    error(api.get(f"/groups/{w['D']}/effective_parents", token=w["eve_t"]), 403)
    error(api.get("/groups/424242/effective_children", token=api.root), 404)


def test_a_provider_sees_parents_only_inside_its_region(api: Api, diamond: dict[str, Any]) -> None:
    w = diamond
    p, pt = provider(api, "prov1")
    support(api, api.root, w["S"], p["id"], provider_token=pt)
    # S's groups are A and everything below; P (A's parent, in T) is outside the region
    assert [g["name"] for g in api.get(f"/groups/{w['D']}/effective_parents", token=pt).json()["items"]] == [
        "A", "B", "C"]
    assert api.get(f"/groups/{w['A']}/parents", token=pt).json()["total"] == 0
    assert api.get(f"/groups/{w['A']}/effective_parents", token=api.root).json()["total"] == 1
    error(api.get(f"/groups/{w['P']}/effective_children", token=pt), 403)
    error(api.get(f"/users/{w['dora']['id']}/effective_spaces", token=pt), 403)


def test_a_users_effective_groups_and_spaces(api: Api, diamond: dict[str, Any]) -> None:
    w = diamond
    me = w["dora"]["id"]
    groups = {g["name"]: g for g in api.get(f"/users/{me}/effective_groups", token=w["dora_t"]).json()["items"]}
    assert set(groups) == {"A", "B", "C", "D", "P"}
    assert (groups["D"]["direct"], groups["D"]["role"], groups["D"]["membership"]) == (True, "member", [])
    assert groups["A"]["membership"] == [[w["B"], w["D"]]] and groups["A"]["direct"] is False
    assert groups["P"]["membership"] == [[w["A"], w["B"], w["D"]]]
    spaces = {s["name"]: s for s in api.get(f"/users/{me}/effective_spaces", token=w["dora_t"]).json()["items"]}
    assert set(spaces) == {"S", "T"}
    assert (spaces["S"]["role"], spaces["S"]["direct"], spaces["S"]["membership"]) == (
        "member", False, [[w["A"], w["B"], w["D"]]])
    assert spaces["T"]["role"] == "admin"  # P's role in T reaches dora
    assert spaces["T"]["membership"] == [[w["P"], w["A"], w["B"], w["D"]]]
    # agrees with the space's own view
    eff = {u["username"]: u for u in api.get(f"/spaces/{w['T']}/effective_users", token=api.root).json()["items"]}
    assert eff["dora"]["role"] == "admin"
    eve = api.get(f"/users/{w['eve']['id']}/effective_spaces", token=w["eve_t"]).json()["items"]
    assert [(s["name"], s["direct"], s["membership"]) for s in eve] == [("S", True, [])]


def test_another_user_sees_only_what_it_may_see(api: Api, diamond: dict[str, Any]) -> None:
    w = diamond
    me = w["dora"]["id"]
    # eve shares S with dora, and no group: she sees S only, and not the groups dora reaches it through
    shared = api.get(f"/users/{me}/effective_spaces", token=w["eve_t"]).json()["items"]
    assert [(s["name"], s["direct"], s["membership"]) for s in shared] == [("S", False, [])]
    assert api.get(f"/users/{me}/effective_groups", token=w["eve_t"]).json()["total"] == 0
    # bob shares nothing
    assert api.get(f"/users/{me}/effective_spaces", token=w["bob_t"]).json()["total"] == 0
    assert api.get(f"/users/{me}/effective_groups", token=w["bob_t"]).json()["total"] == 0
    assert api.get(f"/users/{me}/effective_spaces", token=api.root).json()["total"] == 2
    error(api.get("/users/424242/effective_groups", token=api.root), 404)
    error(api.get(f"/users/{me}/effective_groups"), 401)
    # once she is in A (so in P, and in T through P; she sees A and P, not B, C or D) the chains
    # still name none of them
    join(api, api.root, "groups", w["A"], w["eve"]["id"])
    shared = api.get(f"/users/{me}/effective_spaces", token=w["eve_t"]).json()["items"]
    assert [(s["name"], s["membership"]) for s in shared] == [("S", []), ("T", [])]
    assert [(g["name"], g["membership"]) for g in
            api.get(f"/users/{me}/effective_groups", token=w["eve_t"]).json()["items"]] == [("A", []), ("P", [])]
    # in D too (so in B and C through it): the chain through A, B and D is hers to see
    join(api, api.root, "groups", w["D"], w["eve"]["id"])
    full = {"S": [[w["A"], w["B"], w["D"]]], "T": [[w["P"], w["A"], w["B"], w["D"]]]}
    for who in (w["eve_t"], w["dora_t"], api.root):  # as dora herself and root always see them
        seen = api.get(f"/users/{me}/effective_spaces", token=who).json()["items"]
        assert {s["name"]: s["membership"] for s in seen} == full


def _ladder(rungs: int) -> tuple[int, int, int]:
    """A space over ``rungs`` diamonds in a row (2**rungs chains down) and a user at the bottom,
    made in the database directly: the graph is the point, not the HTTP calls that build it."""
    with connection():
        user = User.create(username="deep")
        space = Space.create(name="ladder")
        top = prev = Group.create(name="L0")
        for i in range(rungs):
            left, right = Group.create(name=f"X{i}"), Group.create(name=f"Y{i}")
            nxt = Group.create(name=f"L{i + 1}")
            GroupChild.insert_many([(prev, left), (prev, right), (left, nxt), (right, nxt)],
                                   fields=[GroupChild.parent, GroupChild.child]).execute()
            prev = nxt
        SpaceGroup.create(space=space, group=top, role="member")
        GroupUser.create(group=prev, user=user, role="member")
        return space.id, user.id, prev.id


def test_chains_are_counted_not_enumerated(api: Api) -> None:
    """2**20 chains: the total is exact and the last page is reached without listing the rest."""
    space_id, user_id, bottom = _ladder(20)
    path = f"/spaces/{space_id}/effective_users/{user_id}/membership"
    last = api.get(path, token=api.root, params={"offset": 2**20 - 1, "limit": 5}).json()
    assert last["total"] == 2**20 and len(last["items"]) == 1
    names = [link["name"] for link in last["items"][0]]
    assert names[:2] == ["ladder", "L0"] and names[-2:] == ["L20", "deep"]
    assert all(n.startswith("Y") for n in names[2:-2:2])  # the last chain takes every right-hand side
    first = api.get(path, token=api.root, params={"limit": 1}).json()["items"][0]
    assert all(link["name"].startswith("X") for link in first[2:-2:2])
    up = api.get(f"/groups/{bottom}/effective_parents", token=api.root, params={"limit": 500}).json()
    assert up["total"] == 60 and len(up["items"]) == 60  # L0..L19, X0..X19, Y0..Y19


def test_deep_nesting(api: Api) -> None:
    """120 levels: every route follows the whole chain (one recursive query, not one per level)."""
    with connection():
        user = User.create(username="deep")
        groups = [Group.create(name=f"N{i:03d}") for i in range(120)]
        GroupChild.insert_many([(a, b) for a, b in zip(groups, groups[1:], strict=False)],
                               fields=[GroupChild.parent, GroupChild.child]).execute()
        GroupUser.create(group=groups[-1], user=user, role="admin")
        space = Space.create(name="deep-space")
        SpaceGroup.create(space=space, group=groups[0], role="admin")
    top, bottom = groups[0].id, groups[-1].id
    assert api.get(f"/groups/{top}/effective_children", token=api.root).json()["total"] == 119
    assert api.get(f"/groups/{bottom}/effective_parents", token=api.root).json()["total"] == 119
    page = api.get(f"/spaces/{space.id}/effective_users/{user.id}/membership", token=api.root).json()
    assert page["total"] == 1 and len(page["items"][0]) == 122
    spaces = api.get(f"/users/{user.id}/effective_spaces", token=api.root).json()["items"]
    assert [(s["name"], s["role"], len(s["membership"][0])) for s in spaces] == [("deep-space", "admin", 120)]
    eff = api.get(f"/spaces/{space.id}/effective_users", token=api.root).json()["items"]
    assert [(u["username"], u["membership"][0][-1]) for u in eff] == [("deep", bottom)]

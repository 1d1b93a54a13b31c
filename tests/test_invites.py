"""Invite tokens over real HTTP on both databases: issue, join, uses, expiry, revocation, role ceiling."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Any

from control.core.db import connection
from control.registry.models import Invite
from tests.support.client import Api
from tests.support.registry import created, error, group, join, space


def invite(api: Api, token: str, kind: str, ident: int, **body: Any) -> dict[str, Any]:
    return created(api.post(f"/{kind}/{ident}/invites", token=token, json=body))


def members(api: Api, kind: str, ident: int) -> dict[str, str]:
    items = api.get(f"/{kind}/{ident}/users", token=api.root).json()["items"]
    return {u["username"]: u["role"] for u in items}


def feed_since(api: Api, token: str, since: int) -> list[dict[str, Any]]:
    return api.get("/changes", token=token, params={"since": since}).json()["changes"]


def test_single_use_invite_joins_once_with_its_role_and_is_stored_hashed(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    _, bt = api.user_with_token("bob")
    _, ct = api.user_with_token("carl")
    s = space(api, ot, "climate")["id"]
    resp = api.post(f"/spaces/{s}/invites", token=ot, json={"role": "admin"})
    issued = created(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    assert issued["invite"]["role"] == "admin" and issued["invite"]["max_uses"] == 1
    assert issued["invite"]["state"] == "active" and issued["invite"]["space_id"] == s
    with connection():
        stored = Invite.get_by_id(issued["invite"]["id"])
    assert stored.token_hash == hashlib.sha256(issued["token"].encode()).hexdigest()
    # 7 days unless asked otherwise
    expires = datetime.fromisoformat(issued["invite"]["expires_at"].replace("Z", "+00:00")).timestamp()
    assert abs(expires - (time.time() + 7 * 86400)) < 120

    joined = api.post("/spaces/join", token=bt, json={"token": issued["token"]})
    assert joined.status_code == 201, joined.text
    assert joined.json() == {"target": "space", "target_id": s, "target_name": "climate", "member": "user",
                             "member_id": joined.json()["member_id"], "role": "admin"}
    assert members(api, "spaces", s)["bob"] == "admin"
    assert api.get(f"/spaces/{s}", token=bt).json()["role"] == "admin"
    # used up: a clear 410, and nothing changes
    assert "used 1 of 1" in error(api.post("/spaces/join", token=ct, json={"token": issued["token"]}), 410)
    assert "carl" not in members(api, "spaces", s)
    listed = api.get(f"/spaces/{s}/invites", token=ot).json()
    assert [(i["uses"], i["state"]) for i in listed["items"]] == [(1, "used")]
    assert issued["token"] not in api.get(f"/spaces/{s}/invites", token=ot).text


def test_multi_use_invite_and_joining_twice(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "ocean")["id"]
    issued = invite(api, ot, "spaces", s, uses=3)
    tokens = [api.user_with_token(n)[1] for n in ("u1", "u2", "u3", "u4")]
    assert api.post("/spaces/join", token=tokens[0], json={"token": issued["token"]}).status_code == 201
    # already a member: 409, and the use is not consumed
    assert "already a member" in error(api.post("/spaces/join", token=tokens[0], json={"token": issued["token"]}), 409)
    assert api.post("/spaces/join", token=tokens[1], json={"token": issued["token"]}).status_code == 201
    assert api.post("/spaces/join", token=tokens[2], json={"token": issued["token"]}).status_code == 201
    error(api.post("/spaces/join", token=tokens[3], json={"token": issued["token"]}), 410)
    assert members(api, "spaces", s) == {"olga": "owner", "u1": "member", "u2": "member", "u3": "member"}


def test_expired_invite_is_refused_and_changes_nothing(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    _, bt = api.user_with_token("bob")
    g = group(api, ot, "lab")["id"]
    issued = invite(api, ot, "groups", g, expires_in=60)
    with connection():
        Invite.update(expires_at=time.time() - 1).where(Invite.id == issued["invite"]["id"]).execute()
    assert "expired" in error(api.post("/groups/join", token=bt, json={"token": issued["token"]}), 410)
    assert members(api, "groups", g) == {"olga": "owner"}
    assert api.get(f"/groups/{g}/invites", token=ot).json()["items"][0]["state"] == "expired"
    assert api.get(f"/groups/{g}/invites", token=ot).json()["items"][0]["uses"] == 0


def test_expiry_is_bounded_by_the_setting(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "bounded")["id"]
    assert "invite_max_ttl" in error(api.post(f"/spaces/{s}/invites", token=ot,
                                              json={"expires_in": 31 * 86400}), 422)
    assert "expires_in" in error(api.post(f"/spaces/{s}/invites", token=ot, json={"expires_in": 10}), 422)
    assert "uses" in error(api.post(f"/spaces/{s}/invites", token=ot, json={"uses": 0}), 422)
    assert invite(api, ot, "spaces", s, expires_in=30 * 86400)["invite"]["state"] == "active"


def test_revoked_invite_is_refused_and_its_revocation_is_in_the_feed(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    mia, mt = api.user_with_token("mia")
    _, bt = api.user_with_token("bob")
    _, st = api.user_with_token("stranger")
    s = space(api, ot, "climate")["id"]
    join(api, ot, "spaces", s, mia["id"])
    mark = api.get("/changes", token=mt).json()["last_seq"]
    issued = invite(api, ot, "spaces", s, uses=5)
    iid = issued["invite"]["id"]
    error(api.delete(f"/spaces/{s}/invites/{iid}", token=mt), 403)  # a plain member revokes nothing
    assert api.delete(f"/spaces/{s}/invites/{iid}", token=ot).status_code == 204
    assert api.delete(f"/spaces/{s}/invites/{iid}", token=ot).status_code == 204  # and again: nothing
    error(api.delete(f"/spaces/{s}/invites/424242", token=ot), 404)
    assert "revoked" in error(api.post("/spaces/join", token=bt, json={"token": issued["token"]}), 410)
    assert "bob" not in members(api, "spaces", s)
    assert api.get(f"/spaces/{s}/invites", token=ot).json()["items"][0]["state"] == "revoked"
    # the space's members see the invite come and go (never its token); a stranger does not
    seen = [(c["entity"], c["op"], c["space_id"]) for c in feed_since(api, mt, mark)]
    assert seen == [("invite", "create", s), ("invite", "delete", s)]
    assert issued["token"] not in api.get("/changes", token=api.root, params={"since": mark}).text
    assert [c for c in feed_since(api, st, mark) if c["entity"] == "invite"] == []


def test_joining_is_in_the_feed_naming_the_invite(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    bob, bt = api.user_with_token("bob")
    s = space(api, ot, "climate")["id"]
    issued = invite(api, ot, "spaces", s)
    mark = api.get("/changes", token=ot).json()["last_seq"]
    assert api.post("/spaces/join", token=bt, json={"token": issued["token"]}).status_code == 201
    for reader in (ot, bt):
        changes = feed_since(api, reader, mark)
        assert [(c["entity"], c["op"], c["space_id"], c["user_id"]) for c in changes] == [
            ("space_user", "create", s, bob["id"])]
        assert changes[0]["data"] == {"user": bob["id"], "role": "member", "invite": issued["invite"]["id"]}


def test_role_ceiling(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    adam, at = api.user_with_token("adam")
    s = space(api, ot, "climate")["id"]
    g = group(api, ot, "lab")["id"]
    join(api, ot, "spaces", s, adam["id"], "admin")
    join(api, ot, "groups", g, adam["id"], "admin")
    # an admin invites members, not owners (nor admins: only an owner grants those)
    assert "owner" in error(api.post(f"/spaces/{s}/invites", token=at, json={"role": "owner"}), 403)
    error(api.post(f"/spaces/{s}/invites", token=at, json={"role": "admin"}), 403)
    error(api.post(f"/groups/{g}/invites", token=at, json={"role": "owner"}), 403)
    assert invite(api, at, "spaces", s)["invite"]["role"] == "member"
    assert invite(api, ot, "spaces", s, role="owner")["invite"]["role"] == "owner"
    assert invite(api, api.root, "groups", g, role="owner")["invite"]["created_by"] is None
    assert "role" in error(api.post(f"/spaces/{s}/invites", token=ot, json={"role": "boss"}), 422)
    # a group in a space is a member or an admin; a nested group has no role at all
    assert "role" in error(api.post(f"/spaces/{s}/invites", token=ot,
                                    json={"subject": "group", "role": "owner"}), 422)
    assert "role" in error(api.post(f"/groups/{g}/invites", token=ot,
                                    json={"subject": "group", "role": "admin"}), 422)


def test_group_redemption_takes_an_admin_of_the_joining_group(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    lead, lt = api.user_with_token("lead")
    plain, pt = api.user_with_token("plain")
    s = space(api, ot, "climate")["id"]
    team = group(api, lt, "team")["id"]
    join(api, lt, "groups", team, plain["id"])
    issued = invite(api, ot, "spaces", s, subject="group", role="admin", uses=2)
    # a plain member of the group may not commit it; nothing changes
    assert "admin" in error(api.post("/spaces/join", token=pt, json={"token": issued["token"], "group": team}), 403)
    assert "group" in error(api.post("/spaces/join", token=lt, json={"token": issued["token"]}), 422)
    error(api.post("/spaces/join", token=lt, json={"token": issued["token"], "group": 424242}), 404)
    assert api.get(f"/spaces/{s}/invites", token=ot).json()["items"][0]["uses"] == 0
    joined = api.post("/spaces/join", token=lt, json={"token": issued["token"], "group": team})
    assert joined.status_code == 201, joined.text
    assert joined.json()["member"] == "group" and joined.json()["member_id"] == team
    groups = api.get(f"/spaces/{s}/groups", token=ot).json()["items"]
    assert [(x["id"], x["role"]) for x in groups] == [(team, "admin")]
    assert api.get(f"/spaces/{s}", token=pt).json()["role"] == "admin"  # through the group
    error(api.post("/spaces/join", token=lt, json={"token": issued["token"], "group": team}), 409)
    # a user invite cannot be redeemed for a group
    user_invite = invite(api, ot, "spaces", s)["token"]
    assert "group" in error(api.post("/spaces/join", token=lt, json={"token": user_invite, "group": team}), 422)


def test_group_invite_nests_the_group_and_refuses_a_cycle(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    parent = group(api, ot, "parent")["id"]
    child = group(api, ot, "child")["id"]
    issued = invite(api, ot, "groups", parent, subject="group", uses=3)
    joined = api.post("/groups/join", token=ot, json={"token": issued["token"], "group": child})
    assert joined.status_code == 201 and joined.json()["role"] is None
    assert [c["id"] for c in api.get(f"/groups/{parent}/children", token=ot).json()["items"]] == [child]
    # the parent joining itself, or its own child joining it back, would close a loop
    back = invite(api, ot, "groups", child, subject="group")
    assert "cycle" in error(api.post("/groups/join", token=ot, json={"token": back["token"], "group": parent}), 409)
    assert api.get(f"/groups/{child}/invites", token=ot).json()["items"][0]["uses"] == 0
    assert "cycle" in error(api.post("/groups/join", token=ot, json={"token": issued["token"], "group": parent}), 409)


def test_tokens_are_for_their_kind_and_only_users_redeem(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    _, bt = api.user_with_token("bob")
    s = space(api, ot, "climate")["id"]
    g = group(api, ot, "lab")["id"]
    to_space = invite(api, ot, "spaces", s)["token"]
    to_group = invite(api, ot, "groups", g)["token"]
    error(api.post("/groups/join", token=bt, json={"token": to_space}), 404)
    error(api.post("/spaces/join", token=bt, json={"token": to_group}), 404)
    error(api.post("/spaces/join", token=bt, json={"token": "zfi_guess"}), 404)
    error(api.post("/spaces/join", token=api.root, json={"token": to_space}), 403)
    error(api.post("/spaces/join", json={"token": to_space}), 401)
    assert "token" in error(api.post("/spaces/join", token=bt, json={}), 422)
    assert api.post("/groups/join", token=bt, json={"token": to_group}).status_code == 201
    assert members(api, "groups", g) == {"olga": "owner", "bob": "member"}
    # invites go with their space or group
    assert api.delete(f"/spaces/{s}", token=ot).status_code == 204
    assert api.delete(f"/groups/{g}", token=ot).status_code == 204
    with connection():
        assert Invite.select().count() == 0

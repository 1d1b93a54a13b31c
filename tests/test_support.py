"""Support takes the provider's consent, over real HTTP on both databases: support tokens,
the provider's redemption, its limit, and what a space admin can no longer do."""

from __future__ import annotations

import hashlib
import time

from control.core.db import connection
from control.registry.models import SupportToken
from tests.support.client import Api
from tests.support.registry import MIB, created, error, provider, resize, space, support, support_token


def redeem(api: Api, provider_id: int, token: str, ticket: str, size: int | None = None):  # noqa: ANN201
    body = {"token": ticket} | ({"size": size} if size is not None else {})
    return api.post(f"/providers/{provider_id}/supports", token=token, json=body)


def test_an_ordinary_user_cannot_commit_a_providers_storage(api: Api) -> None:
    """The issue's first report: Alice's PUT answered 200 and took 1 GiB of a provider's storage."""
    _, at = api.user_with_token("alice")
    s = space(api, at, "mine")["id"]
    p, _ = provider(api, "prov1")
    msg = error(api.put(f"/spaces/{s}/providers/{p['id']}", token=at, json={"size": 1 << 30}), 403)
    assert f"/spaces/{s}/support_tokens" in msg and f"/providers/{p['id']}/supports" in msg
    error(api.put(f"/spaces/{s}/providers/{p['id']}", token=api.root, json={"size": 1 << 30}), 403)
    error(api.post(f"/providers/{p['id']}/supports", token=at, json={"token": "zfs_x", "size": MIB}), 403)
    assert api.get(f"/spaces/{s}/providers", token=at).json()["total"] == 0


def test_the_space_admin_cannot_resize_a_support(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "data")["id"]
    p, pt = provider(api, "prov1")
    support(api, ot, s, p["id"], 2 * MIB, provider_token=pt)
    error(api.put(f"/spaces/{s}/providers/{p['id']}", token=ot, json={"size": 5 * MIB}), 403)
    error(api.put(f"/providers/{p['id']}/spaces/{s}", token=ot, json={"size": 5 * MIB}), 403)
    assert api.get(f"/spaces/{s}/providers/{p['id']}", token=ot).json()["size"] == 2 * MIB
    # the provider (or root for it) resizes; the space admin may still revoke
    assert resize(api, s, p["id"], 3 * MIB, pt)["size"] == 3 * MIB
    assert resize(api, s, p["id"], 4 * MIB)["size"] == 4 * MIB
    assert api.delete(f"/spaces/{s}/providers/{p['id']}", token=ot).status_code == 204


def test_a_token_for_one_provider_is_refused_to_another(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "data")["id"]
    p, pt = provider(api, "prov1")
    q, qt = provider(api, "prov2")
    ticket = support_token(api, ot, s, provider=p["id"], size=MIB)
    assert f"for provider {p['id']}" in error(redeem(api, q["id"], qt, ticket), 403)
    error(redeem(api, q["id"], api.root, ticket), 403)  # root on q's behalf: still q
    assert api.get(f"/spaces/{s}/providers", token=ot).json()["total"] == 0
    assert redeem(api, p["id"], pt, ticket).status_code == 201
    # single use
    assert "already redeemed" in error(redeem(api, p["id"], pt, ticket), 410)


def test_a_token_open_to_any_provider(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "data")["id"]
    p, pt = provider(api, "prov1")
    q, qt = provider(api, "prov2")
    ticket = support_token(api, ot, s)  # no provider, no size: the provider decides
    assert "size" in error(redeem(api, q["id"], qt, ticket), 422)
    made = redeem(api, q["id"], qt, ticket, 7 * MIB)
    assert made.status_code == 201 and (made.json()["provider_id"], made.json()["size"]) == (q["id"], 7 * MIB)
    error(redeem(api, p["id"], pt, ticket, MIB), 410)
    # a second token for the same provider: it already supports the space
    again = support_token(api, ot, s)
    assert "already supports" in error(redeem(api, q["id"], qt, again, MIB), 409)
    listed = {t["id"]: t for t in api.get(f"/spaces/{s}/support_tokens", token=ot).json()["items"]}
    assert [(t["state"], t["used_by"]) for t in listed.values()] == [("used", q["id"]), ("active", None)]


def test_support_tokens_expire_are_revoked_and_are_stored_hashed(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "data")["id"]
    p, pt = provider(api, "prov1")
    resp = api.post(f"/spaces/{s}/support_tokens", token=ot, json={"provider": p["id"], "size": MIB})
    issued = created(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    with connection():
        row = SupportToken.get_by_id(issued["support_token"]["id"])
        assert row.token_hash == hashlib.sha256(issued["token"].encode()).hexdigest()
        SupportToken.update(expires_at=time.time() - 1).where(SupportToken.id == row.id).execute()
    assert "expired" in error(redeem(api, p["id"], pt, issued["token"]), 410)
    revoked = support_token(api, ot, s, provider=p["id"], size=MIB)
    tid = api.get(f"/spaces/{s}/support_tokens", token=ot).json()["items"][-1]["id"]
    assert api.delete(f"/spaces/{s}/support_tokens/{tid}", token=ot).status_code == 204
    assert "revoked" in error(redeem(api, p["id"], pt, revoked), 410)
    error(api.delete(f"/spaces/{s}/support_tokens/424242", token=ot), 404)
    states = [t["state"] for t in api.get(f"/spaces/{s}/support_tokens", token=ot).json()["items"]]
    assert states == ["expired", "revoked"]
    assert issued["token"] not in api.get(f"/spaces/{s}/support_tokens", token=ot).text
    assert api.get(f"/spaces/{s}/providers", token=ot).json()["total"] == 0
    assert "provider" in error(api.post(f"/spaces/{s}/support_tokens", token=ot, json={"provider": 424242}), 422)
    assert "invite_max_ttl" in error(api.post(f"/spaces/{s}/support_tokens", token=ot,
                                              json={"expires_in": 40 * 86400}), 422)


def test_a_provider_limit_refuses_what_would_exceed_it_with_the_numbers(api: Api) -> None:
    _, ot = api.user_with_token("olga")
    s1, s2 = (space(api, ot, n)["id"] for n in ("s1", "s2"))
    p, pt = provider(api, "prov1", support_limit=10 * MIB)
    assert (p["support_limit"], p["granted"]) == (10 * MIB, 0)
    support(api, ot, s1, p["id"], 6 * MIB, provider_token=pt)
    ticket = support_token(api, ot, s2, provider=p["id"])
    msg = error(redeem(api, p["id"], pt, ticket, 5 * MIB), 409)
    assert str(10 * MIB) in msg and str(6 * MIB) in msg and str(11 * MIB) in msg
    assert redeem(api, p["id"], pt, ticket, 4 * MIB).status_code == 201  # the failed try used nothing
    assert api.get(f"/providers/{p['id']}", token=pt).json()["granted"] == 10 * MIB
    assert str(10 * MIB) in error(api.put(f"/providers/{p['id']}/spaces/{s1}", token=pt, json={"size": 7 * MIB}), 409)
    error(api.put(f"/spaces/{s1}/providers/{p['id']}", token=pt, json={"size": 7 * MIB}), 409)
    assert resize(api, s1, p["id"], 5 * MIB, pt)["size"] == 5 * MIB  # shrinking always fits
    # the limit is the provider's setting: it may not go below what it grants now
    assert "support_limit" in error(api.patch(f"/providers/{p['id']}", token=pt, json={"support_limit": MIB}), 409)
    limit = f"/providers/{p['id']}"
    assert api.patch(limit, token=pt, json={"support_limit": 9 * MIB}).json()["support_limit"] == 9 * MIB
    assert api.patch(limit, token=api.root, json={"support_limit": None}).json()["support_limit"] is None
    assert resize(api, s1, p["id"], 100 * MIB, pt)["size"] == 100 * MIB
    assert "support_limit" in error(api.patch(f"/providers/{p['id']}", token=pt, json={"support_limit": -1}), 422)


def test_the_agents_feed_entries_come_from_the_redemption(api: Api) -> None:
    """The provider agent keeps a directory per support change scoped to it: redeeming makes
    exactly one ``support create`` for it, and issuing a token makes none."""
    _, ot = api.user_with_token("olga")
    s = space(api, ot, "data")["id"]
    p, pt = provider(api, "prov1")
    mark = api.get("/changes", token=pt).json()["last_seq"]
    ticket = support_token(api, ot, s, provider=p["id"], size=MIB)
    assert api.get("/changes", token=pt, params={"since": mark}).json()["changes"] == []
    assert redeem(api, p["id"], pt, ticket).status_code == 201
    changes = api.get("/changes", token=pt, params={"since": mark}).json()["changes"]
    assert [(c["entity"], c["op"], c["space_id"], c["provider_id"]) for c in changes] == [
        ("support", "create", s, p["id"])]
    assert changes[0]["data"] == {"space": s, "space_name": "data", "provider": p["id"], "size": MIB}

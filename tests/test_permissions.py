"""The authorization matrix: who may do what on groups, spaces, support, invites and providers.

Each row is one route; each column one caller: the administrator (root secret), the
owner, an admin and a plain member of both the group and the space, a stranger (a
user in neither), the provider supporting the space, and another provider. After every
write that went through, the next caller gets a fresh little world, so a delete in one
cell cannot change the next.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from control.core.db import connection
from control.registry.identity import new_token
from control.registry.models import User
from tests.support.client import Api
from tests.support.registry import MIB, created, join, provider, support, support_token

CALLERS = ("root", "owner", "admin", "member", "stranger", "provider", "other_provider")

# method, path, body, expected status per caller (in CALLERS order)
MATRIX: list[tuple[str, str, dict[str, Any] | None, tuple[int, ...]]] = [
    ("GET", "/groups/{g}", None, (200, 200, 200, 200, 403, 200, 403)),
    ("PATCH", "/groups/{g}", {"name": "renamed-{n}"}, (200, 200, 200, 403, 403, 403, 403)),
    ("DELETE", "/groups/{g}", None, (204, 204, 403, 403, 403, 403, 403)),
    ("GET", "/groups/{g}/users", None, (200, 200, 200, 200, 403, 200, 403)),
    ("PUT", "/groups/{g}/users/{x}", {"role": "member"}, (201, 201, 201, 403, 403, 403, 403)),
    ("PUT", "/groups/{g}/users/{x}", {"role": "admin"}, (201, 201, 403, 403, 403, 403, 403)),
    # removing the admin: the admin itself may leave
    ("DELETE", "/groups/{g}/users/{a}", None, (204, 204, 204, 403, 403, 403, 403)),
    ("PUT", "/groups/{g}/children/{c}", None, (201, 201, 201, 403, 403, 403, 403)),
    ("GET", "/groups/{g}/effective_users", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/spaces/{s}", None, (200, 200, 200, 200, 403, 200, 403)),
    ("PATCH", "/spaces/{s}", {"name": "renamed-{n}"}, (200, 200, 200, 403, 403, 403, 403)),
    ("DELETE", "/spaces/{s}", None, (204, 204, 403, 403, 403, 403, 403)),
    ("PUT", "/spaces/{s}/users/{x}", {"role": "member"}, (201, 201, 201, 403, 403, 403, 403)),
    ("PUT", "/spaces/{s}/users/{x}", {"role": "owner"}, (201, 201, 403, 403, 403, 403, 403)),
    ("DELETE", "/spaces/{s}/users/{m}", None, (204, 204, 204, 204, 403, 403, 403)),
    ("PUT", "/spaces/{s}/groups/{c}", {"role": "member"}, (201, 201, 201, 403, 403, 403, 403)),
    ("PUT", "/spaces/{s}/groups/{g}", {"role": "admin"}, (200, 200, 403, 403, 403, 403, 403)),
    ("GET", "/spaces/{s}/effective_users", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/spaces/{s}/providers", None, (200, 200, 200, 200, 403, 200, 403)),
    # support takes the provider's consent: no one commits a provider's storage on the old route
    ("PUT", "/spaces/{s}/providers/{q}", {"size": MIB}, (403, 403, 403, 403, 403, 403, 403)),
    ("PUT", "/spaces/{s}/providers/{p}", {"size": 2 * MIB}, (403, 403, 403, 403, 403, 200, 403)),
    ("DELETE", "/spaces/{s}/providers/{p}", None, (204, 204, 204, 403, 403, 204, 403)),
    ("POST", "/spaces/{s}/support_tokens", {}, (201, 201, 201, 403, 403, 403, 403)),
    ("GET", "/spaces/{s}/support_tokens", None, (200, 200, 200, 403, 403, 403, 403)),
    ("POST", "/providers/{q}/supports", {"token": "{tq}"}, (201, 403, 403, 403, 403, 403, 201)),
    ("PUT", "/providers/{p}/spaces/{s}", {"size": 2 * MIB}, (200, 403, 403, 403, 403, 200, 403)),
    ("DELETE", "/providers/{p}/spaces/{s}", None, (204, 403, 403, 403, 403, 204, 403)),
    ("POST", "/spaces/{s}/invites", {"role": "member"}, (201, 201, 201, 403, 403, 403, 403)),
    ("POST", "/spaces/{s}/invites", {"role": "owner"}, (201, 201, 403, 403, 403, 403, 403)),
    ("GET", "/spaces/{s}/invites", None, (200, 200, 200, 403, 403, 403, 403)),
    ("POST", "/groups/{g}/invites", {"role": "admin"}, (201, 201, 403, 403, 403, 403, 403)),
    ("GET", "/groups/{g}/invites", None, (200, 200, 200, 403, 403, 403, 403)),
    ("GET", "/groups/{g}/parents", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/groups/{g}/effective_parents", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/groups/{g}/effective_children", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/groups/{g}/effective_users/{m}/membership", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/spaces/{s}/effective_users/{m}/membership", None, (200, 200, 200, 200, 403, 200, 403)),
    ("GET", "/users/{m}/effective_groups", None, (200, 200, 200, 200, 200, 403, 403)),
    ("GET", "/users/{m}/effective_spaces", None, (200, 200, 200, 200, 200, 403, 403)),
    ("GET", "/providers/{p}", None, (200, 200, 200, 200, 200, 200, 403)),
    ("PATCH", "/providers/{p}", {"domain": "moved.example.org"}, (200, 403, 403, 403, 403, 200, 403)),
    ("DELETE", "/providers/{p}", None, (204, 403, 403, 403, 403, 403, 403)),
    ("POST", "/providers/{p}/token", None, (200, 403, 403, 403, 403, 200, 403)),
    ("GET", "/providers/{p}/spaces", None, (200, 403, 403, 403, 403, 200, 403)),
    ("POST", "/providers", {"name": "new-{n}", "domain": "new.example.org", "admin_email": "o@example.org"},
     (201, 403, 403, 403, 403, 403, 403)),
    ("POST", "/groups", {"name": "made-{n}"}, (201, 201, 201, 201, 201, 403, 403)),
    ("POST", "/spaces", {"name": "made-{n}"}, (201, 201, 201, 201, 201, 403, 403)),
]


class World:
    """Users shared by the cells of one row; ``build`` makes a fresh group, space and providers."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.users: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {"root": api.root}
        # Users and their tokens are made in the database directly: the matrix is about
        # authorization, and skipping ~10 argon2 hashes per row keeps it quick.
        # (Creating users and the password grant are tested over HTTP in test_users.py.)
        with connection():
            for name in ("owner", "admin", "member", "stranger", "target"):
                user = User.create(username=name)
                self.users[name] = {"id": user.id}
                self.tokens[name] = new_token("user", user=user, ttl=3600)[0]
        self.target = self.users["target"]
        self.counter = itertools.count()

    def build(self) -> dict[str, Any]:
        api, n = self.api, next(self.counter)
        ot = self.tokens["owner"]
        g = created(api.post("/groups", token=ot, json={"name": f"g{n}"}))["id"]
        c = created(api.post("/groups", token=ot, json={"name": f"c{n}"}))["id"]
        s = created(api.post("/spaces", token=ot, json={"name": f"s{n}"}))["id"]
        for kind, ident in (("groups", g), ("groups", c), ("spaces", s)):
            join(api, ot, kind, ident, self.users["admin"]["id"], "admin")
            join(api, ot, kind, ident, self.users["member"]["id"], "member")
        api.put(f"/spaces/{s}/groups/{g}", token=ot, json={"role": "member"})
        p, pt = provider(api, f"p{n}")
        q, qt = provider(api, f"q{n}")
        support(api, ot, s, p["id"], provider_token=pt)
        tq = support_token(api, ot, s, provider=q["id"], size=MIB)  # q is asked, and has not answered
        self.tokens["provider"], self.tokens["other_provider"] = pt, qt
        return {"n": n, "g": g, "c": c, "s": s, "p": p["id"], "q": q["id"], "x": self.target["id"],
                "a": self.users["admin"]["id"], "m": self.users["member"]["id"], "tq": tq}


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("method,path,body,expected", MATRIX,
                         ids=[f"{m} {p} {(b or {}).get('role', '')}".strip() for m, p, b, _ in MATRIX])
def test_authorization_matrix(api: Api, method: str, path: str, body: dict[str, Any] | None,
                              expected: tuple[int, ...]) -> None:
    world = World(api)
    got = {}
    ids = world.build()
    for caller in CALLERS:
        resp = api.request(method, path.format(**ids), token=world.tokens[caller], json=_fill(body, ids))
        got[caller] = resp.status_code
        if method != "GET" and resp.status_code < 400:
            ids = world.build()  # a write went through: the next caller gets an untouched world
        if resp.status_code >= 400:
            assert resp.json()["error"]["code"] in ("forbidden",), resp.text
    assert got == dict(zip(CALLERS, expected, strict=True))

"""Credentials under abuse, over real HTTP on both databases: login throttling, password changes,
refresh tokens, read-only tokens, a user's token list, and argon2id at its real cost.

The in-process servers hash cheaply (``ZONEFARM_TEST_PASSWORD_HASH``, see ``tests/conftest.py``);
the tests about the hash cost run ``zonefarm`` subprocesses, which hash at the production cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from argon2 import PasswordHasher, extract_parameters

from control.core.config import Settings
from control.core.db import connection, init_database
from control.registry.models import User
from control.web.app import build_app
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.apiproc import ApiProcess, api_env, clean_env
from tests.support.client import Api
from tests.support.pg import free_port
from tests.support.registry import error
from tests.support.server import LiveServer

PW = "password123"


def grant(api: Api, username: str, password: str = PW, **extra: str) -> requests.Response:
    return api.post("/auth/token", data={"grant_type": "password", "username": username,
                                         "password": password, **extra})


def refresh(api: Api, token: str, **extra: str) -> requests.Response:
    return api.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": token, **extra})


@contextmanager
def own_server(db_url: str, tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    """A live server with settings of the test's choosing, on the test's database."""
    settings = Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                        data_dir=str(tmp_path / "d"), listen="127.0.0.1:0", **overrides)
    server = LiveServer(build_app(settings)).start()
    try:
        yield Api(server.url, ROOT_SECRET)
    finally:
        server.stop()


# --- login throttling ------------------------------------------------------------------------

def test_brute_force_on_one_username_is_throttled(db_url: str, tmp_path: Path) -> None:
    with own_server(db_url, tmp_path, login_max_failures=10, login_window=600) as api:
        api.make_user("victim")
        statuses = [grant(api, "victim", f"guess-{i}").status_code for i in range(50)]
        assert statuses[:10] == [401] * 10
        assert statuses[10:] == [429] * 40
        refused = grant(api, "victim")  # the right password, inside the window
        assert "too many failed logins" in error(refused, 429)
        assert 590 <= int(refused.headers["Retry-After"]) <= 601
        assert grant(api, "bystander-unknown", "x").status_code == 401  # other usernames are not locked
        api.make_user("bystander")
        assert grant(api, "bystander").status_code == 200


def test_throttle_lifts_when_the_failures_leave_the_window(db_url: str, tmp_path: Path) -> None:
    with own_server(db_url, tmp_path, login_max_failures=2, login_window=2) as api:
        api.make_user("victim")
        assert [grant(api, "victim", "wrong").status_code for _ in range(2)] == [401, 401]
        refused = grant(api, "victim")
        assert error(refused, 429) and 1 <= int(refused.headers["Retry-After"]) <= 3
        time.sleep(int(refused.headers["Retry-After"]) + 0.2)
        ok = grant(api, "victim")
        assert ok.status_code == 200, ok.text
        # a success forgets the username's failures: the next mistakes start from zero
        assert grant(api, "victim", "wrong").status_code == 401
        assert grant(api, "victim").status_code == 200


def test_failures_from_one_address_are_throttled_whatever_the_username(db_url: str, tmp_path: Path) -> None:
    with own_server(db_url, tmp_path, login_max_failures=100, login_max_failures_per_address=5) as api:
        api.make_user("alice")
        got = [grant(api, f"user{i}", "nope").status_code for i in range(5)]
        assert got == [401] * 5
        # X-Forwarded-For is not believed: the address is the TCP peer
        spoofed = api.post("/auth/token", headers={"X-Forwarded-For": "203.0.113.9"},
                           data={"grant_type": "password", "username": "alice", "password": PW})
        assert error(spoofed, 429) and int(spoofed.headers["Retry-After"]) >= 1


def test_throttle_is_shared_by_every_worker_process(db_url: str, tmp_path: Path) -> None:
    """Failures are counted in the database: two servers on one database share the count."""
    with own_server(db_url, tmp_path, login_max_failures=4) as one, \
            own_server(db_url, tmp_path, login_max_failures=4) as two:
        one.make_user("shared")
        assert [grant(a, "shared", "bad").status_code for a in (one, two, one, two)] == [401] * 4
        assert grant(one, "shared").status_code == 429 and grant(two, "shared").status_code == 429


# --- passwords -------------------------------------------------------------------------------

def test_password_change_needs_the_current_password_and_revokes_other_tokens(api: Api) -> None:
    user = api.make_user("carol")
    uid = user["id"]
    laptop = grant(api, "carol").json()
    phone = grant(api, "carol").json()
    here = laptop["access_token"]
    no_current = api.patch(f"/users/{uid}", token=here, json={"password": "new-password-1"})
    assert "current_password" in error(no_current, 403)
    wrong = api.patch(f"/users/{uid}", token=here, json={"password": "new-password-1", "current_password": "nope"})
    assert "current_password" in error(wrong, 403)
    assert grant(api, "carol").status_code == 200  # unchanged so far
    ok = api.patch(f"/users/{uid}", token=here, json={"password": "new-password-1", "current_password": PW})
    assert ok.status_code == 200, ok.text
    assert api.get("/users", token=here).status_code == 200           # the token that changed it
    assert error(api.get("/users", token=phone["access_token"]), 401)  # every other one is revoked
    assert error(refresh(api, phone["refresh_token"]), 401)
    assert error(refresh(api, laptop["refresh_token"]), 401)
    assert grant(api, "carol").status_code == 401
    assert grant(api, "carol", "new-password-1").status_code == 200


def test_root_sets_a_password_without_the_old_one_and_revokes_every_token(api: Api) -> None:
    user, token = api.user_with_token("dave")
    ok = api.patch(f"/users/{user['id']}", token=api.root, json={"password": "reset-by-root"})
    assert ok.status_code == 200, ok.text
    assert error(api.get("/users", token=token), 401)
    assert grant(api, "dave", "reset-by-root").status_code == 200


def test_wrong_current_passwords_count_against_the_login_throttle(db_url: str, tmp_path: Path) -> None:
    with own_server(db_url, tmp_path, login_max_failures=3) as api:
        user, token = api.user_with_token("erin")
        body = {"password": "new-password-1", "current_password": "guess"}
        got = [api.patch(f"/users/{user['id']}", token=token, json=body).status_code for _ in range(4)]
        assert got == [403, 403, 403, 429]
        assert grant(api, "erin").status_code == 429  # a stolen token cannot be used to guess either


def test_password_is_taken_as_typed(api: Api) -> None:
    api.make_user("spacey", password="  with spaces  ")
    assert grant(api, "spacey", "  with spaces  ").status_code == 200
    assert grant(api, "spacey", "with spaces").status_code == 401


def _zonefarm_python(code: str, tmp_path: Path) -> str:
    """Run Python as a `zonefarm` process would: without the tests' cheap-hash switch."""
    env = clean_env()
    env.pop("ZONEFARM_TEST_PASSWORD_HASH", None)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_argon2id_costs_at_least_64_mib_and_3_passes(tmp_path: Path) -> None:
    encoded = _zonefarm_python("from control.registry.passwords import hash_password; "
                               "print(hash_password('x'))", tmp_path)
    params = extract_parameters(encoded)
    assert encoded.startswith("$argon2id$")
    assert params.memory_cost >= 64 * 1024 and params.time_cost >= 3


def test_old_hashes_are_rehashed_at_the_next_login(db_url: str, tmp_path: Path) -> None:
    """A hash from a release with cheaper parameters (19 MiB, 2 passes) is replaced by one at
    today's cost when its user logs in; `zonefarm api` runs at the production cost here."""
    port = free_port()
    env = api_env(tmp_path, ZONEFARM_DATABASE=db_url, ZONEFARM_ROOT_SECRET=ROOT_SECRET,
                  ZONEFARM_NODES_SECRET=NODES_SECRET, ZONEFARM_LISTEN=f"127.0.0.1:{port}")
    server = ApiProcess(["api"], env, tmp_path / "api.log", port)
    try:
        server.wait_ready()
        api = Api(f"http://127.0.0.1:{port}", ROOT_SECRET)
        user = api.make_user("oldtimer")
        old = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PW)
        init_database(db_url)
        with connection():
            User.update(password_hash=old).where(User.id == user["id"]).execute()
        assert grant(api, "oldtimer").status_code == 200
        with connection():
            stored = User.get_by_id(user["id"]).password_hash
        params = extract_parameters(stored)
        assert stored != old and params.memory_cost >= 64 * 1024 and params.time_cost >= 3
        assert grant(api, "oldtimer").status_code == 200
    finally:
        server.stop()


# --- refresh tokens --------------------------------------------------------------------------

def test_refresh_token_is_good_for_one_exchange(api: Api) -> None:
    api.make_user("frank")
    first = grant(api, "frank").json()
    assert first["refresh_token"] and first["scope"] == "write"
    second = refresh(api, first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["access_token"] not in (first["access_token"], first["refresh_token"])
    assert body["refresh_token"] != first["refresh_token"]
    assert second.headers["Cache-Control"] == "no-store"
    assert api.get("/users", token=body["access_token"]).status_code == 200
    assert error(refresh(api, first["refresh_token"]), 401)  # spent
    assert refresh(api, body["refresh_token"]).status_code == 200
    # a refresh token is not a bearer credential
    assert error(api.get("/users", token=body["refresh_token"]), 401)
    assert error(refresh(api, first["access_token"]), 401)


def test_password_grant_without_a_refresh_token(api: Api) -> None:
    """``refresh=false`` (the dashboard's login): the access token alone, nothing left behind."""
    user = api.make_user("hana")
    body = grant(api, "hana", refresh="false").json()
    assert body["refresh_token"] is None and api.get("/users", token=body["access_token"]).status_code == 200
    kinds = [t["kind"] for t in api.get(f"/users/{user['id']}/tokens", token=api.root).json()["items"]]
    assert kinds == ["access"]
    assert error(grant(api, "hana", refresh="no"), 422)


def test_racing_exchanges_of_one_refresh_token_have_one_winner(api: Api) -> None:
    api.make_user("gina")
    token = grant(api, "gina").json()["refresh_token"]
    results: list[int] = []
    clients = [Api(api.base, api.root) for _ in range(6)]
    threads = [threading.Thread(target=lambda c=c: results.append(refresh(c, token).status_code)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [200] + [401] * 5


def test_refresh_fails_for_an_inactive_user(api: Api) -> None:
    user = api.make_user("hank")
    token = grant(api, "hank").json()["refresh_token"]
    api.patch(f"/users/{user['id']}", token=api.root, json={"active": False})
    assert error(refresh(api, token), 401)


# --- read-only tokens ------------------------------------------------------------------------

def test_read_only_token_reads_and_every_write_is_403(api: Api) -> None:
    user = api.make_user("ivy")
    body = grant(api, "ivy", scope="read").json()
    ro = body["access_token"]
    assert body["scope"] == "read"
    assert api.get("/users", token=ro).status_code == 200
    assert api.get(f"/users/{user['id']}/tokens", token=ro).status_code == 200
    assert api.get("/changes", token=ro).status_code == 200
    writes = [
        api.post("/groups", token=ro, json={"name": "nope"}),
        api.post("/spaces", token=ro, json={"name": "nope"}),
        api.patch(f"/users/{user['id']}", token=ro, json={"full_name": "X"}),
        api.patch(f"/users/{user['id']}", token=ro, json={"password": "new-password-1", "current_password": PW}),
        api.post("/tasks", token=ro, json={"name": "shell", "params": {"argv": ["true"]}}),
        api.delete(f"/users/{user['id']}/tokens", token=ro),
    ]
    for resp in writes:
        assert "read-only" in error(resp, 403)
    assert api.get("/groups", token=ro).json()["total"] == 0
    # refreshing keeps the scope, and cannot widen it
    assert error(refresh(api, body["refresh_token"], scope="write"), 403)
    again = refresh(api, grant(api, "ivy", scope="read").json()["refresh_token"]).json()
    assert again["scope"] == "read"
    assert error(api.post("/groups", token=again["access_token"], json={"name": "nope"}), 403)
    # revoking itself is the one write it may make
    assert api.delete("/auth/token", token=ro).status_code == 204
    assert error(api.get("/users", token=ro), 401)


def test_write_token_may_be_narrowed_on_refresh(api: Api) -> None:
    api.make_user("jill")
    narrowed = refresh(api, grant(api, "jill").json()["refresh_token"], scope="read").json()
    assert narrowed["scope"] == "read"
    assert error(api.post("/groups", token=narrowed["access_token"], json={"name": "x"}), 403)


def test_unknown_scope_is_422(api: Api) -> None:
    api.make_user("kim")
    assert "scope" in error(grant(api, "kim", scope="admin"), 422)


# --- a user's tokens ---------------------------------------------------------------------------

def test_list_and_revoke_a_users_tokens_without_showing_secrets(api: Api) -> None:
    user = api.make_user("lena")
    uid = user["id"]
    a = grant(api, "lena").json()
    b = grant(api, "lena", scope="read").json()
    listed = api.get(f"/users/{uid}/tokens", token=a["access_token"])
    assert listed.status_code == 200, listed.text
    page = listed.json()
    for secret in (a["access_token"], a["refresh_token"], b["access_token"], b["refresh_token"]):
        assert secret not in listed.text
    items = page["items"]
    assert page["total"] == 4 and len(items) == 4
    assert sorted((t["kind"], t["scope"]) for t in items) == [
        ("access", "read"), ("access", "write"), ("refresh", "read"), ("refresh", "write")]
    current = [t for t in items if t["current"]]
    assert len(current) == 1 and current[0]["kind"] == "access" and current[0]["scope"] == "write"
    assert current[0]["last_used_at"] is not None and current[0]["expires_at"] is not None
    assert set(items[0]) == {"id", "kind", "scope", "created_at", "expires_at", "last_used_at", "current"}
    # one token, then all of them
    other = next(t for t in items if t["kind"] == "access" and not t["current"])
    assert api.delete(f"/users/{uid}/tokens/{other['id']}", token=a["access_token"]).status_code == 204
    assert error(api.get("/users", token=b["access_token"]), 401)
    assert error(api.delete(f"/users/{uid}/tokens/{other['id']}", token=a["access_token"]), 404)
    assert api.get(f"/users/{uid}/tokens", token=a["access_token"]).json()["total"] == 3
    assert api.delete(f"/users/{uid}/tokens", token=api.root).status_code == 204
    assert error(api.get("/users", token=a["access_token"]), 401)
    assert error(refresh(api, a["refresh_token"]), 401)
    assert api.get(f"/users/{uid}/tokens", token=api.root).json()["total"] == 0


def test_others_may_not_see_or_revoke_a_users_tokens(api: Api) -> None:
    victim = api.make_user("mona")
    grant(api, "mona")
    _, mallory = api.user_with_token("mallory")
    assert error(api.get(f"/users/{victim['id']}/tokens", token=mallory), 403)
    assert error(api.delete(f"/users/{victim['id']}/tokens", token=mallory), 403)
    assert error(api.get("/users/999999/tokens", token=api.root), 404)
    assert api.get(f"/users/{victim['id']}/tokens", token=api.root).json()["total"] == 2


def test_revoking_the_root_secret_is_refused(api: Api) -> None:
    assert error(api.delete("/auth/token", token=api.root), 403)


def test_token_answers_are_valid_json_without_secrets_in_errors(api: Api) -> None:
    api.make_user("nina")
    resp = grant(api, "nina", "a-secret-guess")
    assert "a-secret-guess" not in resp.text and json.loads(resp.text)["error"]["code"] == "unauthorized"

"""The API under abuse, over real HTTP on both databases: long-poll floods, huge integers,
deep JSON and methods a path does not have. Each answer is a 4xx with a JSON error, never a
500, and what must keep working (health checks, node callbacks) keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from control.core.config import Settings
from control.core.db import connection, init_database
from control.farm.claims import claim
from control.web.longpoll import SLOTS
from tests.conftest import NODES_SECRET, ROOT_SECRET, own_server
from tests.support.apiproc import ApiProcess, api_env
from tests.support.client import Api
from tests.support.nodes import SignedNode
from tests.support.pg import free_port
from tests.support.registry import MIB, error, provider, space, support_token
from tests.support.waiting import wait_for

BIG = 2**63  # one past the largest id
HUGE = 8033693338579941457920


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


# --- long-poll floods ------------------------------------------------------------------------

@pytest.fixture
def gunicorn_api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    """`zonefarm api` as deployed (gunicorn, threaded workers), on the test's database: one
    worker with 4 threads, so 2 long-poll slots. The in-process server has a thread per
    connection and could not starve."""
    port = free_port()
    env = api_env(tmp_path, ZONEFARM_DATABASE=db_url, ZONEFARM_ROOT_SECRET=ROOT_SECRET,
                  ZONEFARM_NODES_SECRET=NODES_SECRET, ZONEFARM_LISTEN=f"127.0.0.1:{port}",
                  ZONEFARM_API_WORKERS="1", ZONEFARM_API_THREADS="4", ZONEFARM_CHANGES_MAX_WAIT="60")
    server = ApiProcess(["api"], env, tmp_path / "api.log", port)
    try:
        server.wait_ready()
        yield Api(f"http://127.0.0.1:{port}", ROOT_SECRET)
    finally:
        server.stop()


def test_a_long_poll_flood_leaves_health_checks_and_callbacks_served(gunicorn_api: Api, db_url: str) -> None:
    api = gunicorn_api
    # a running task, so a node callback has something to report on
    wk = SignedNode(api, "wk1", NODES_SECRET)
    assert wk.register().status_code in (200, 201)
    made = api.post("/tasks", token=api.root, json={"name": "shell", "params": {"argv": ["true"]}})
    assert made.status_code == 201, made.text
    init_database(db_url)
    with connection():
        [task] = claim("flood-test", 5)
    _, token = api.user_with_token("flooder")
    since = api.get("/changes", token=token).json()["last_seq"]

    def poll(_: int) -> requests.Response:
        return requests.get(f"{api.base}/api/v1/changes", params={"since": since, "timeout": 15},
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)

    with ThreadPoolExecutor(max_workers=50) as pool:
        started = time.monotonic()
        polls = [pool.submit(poll, i) for i in range(50)]
        # the flood has arrived when all but the two it may hold are answered
        wait_for("48 polls answered", lambda: sum(p.done() for p in polls) >= 48, timeout=30, every=0.1)
        health, took = _timed(lambda: requests.get(f"{api.base}/api/v1/healthz", timeout=10))
        assert health.status_code == 200 and took < 1.0, took
        called, took = _timed(lambda: wk.callback(task.id, "started", task.attempt))
        assert called.status_code == 200 and took < 1.0, (called.text, took)
        beat, took = _timed(lambda: wk.heartbeat())
        assert beat.status_code == 200 and took < 1.0, took
        listed, took = _timed(lambda: api.get("/users", token=token, timeout=10))
        assert listed.status_code == 200 and took < 1.0, took
        fifty_first, took = _timed(lambda: poll(51))
        assert fifty_first.status_code == 429 and took < 1.0, (fifty_first.text, took)
        assert int(fifty_first.headers["Retry-After"]) >= 1
        results = [p.result() for p in polls]
    statuses = sorted(r.status_code for r in results)
    # the per-caller cap (2) lets two wait; everything else was answered at once
    assert statuses.count(200) <= 2 and statuses.count(429) >= 48, statuses
    assert all(r.json()["error"]["code"] == "too_many_requests" for r in results if r.status_code == 429)
    assert time.monotonic() - started < 25  # the two held polls ended at their timeout
    # with the flood gone, long-polls are served again
    again = api.get("/changes", token=token, params={"since": since, "timeout": 0.5}, timeout=10)
    assert again.status_code == 200


def test_long_polls_are_capped_per_process_across_callers(db_url: str, tmp_path: Path) -> None:
    """Three slots: three users wait, a fourth is told to come back; without a wait nobody is refused."""
    with own_server(db_url, tmp_path, changes_max_polls=3, changes_max_polls_per_principal=1) as api:
        tokens = [api.user_with_token(f"poller{i}")[1] for i in range(4)]
        since = api.get("/changes", token=api.root).json()["last_seq"]
        clients = [Api(api.base, api.root) for _ in tokens]

        def poll(i: int) -> requests.Response:
            return clients[i].get("/changes", token=tokens[i], params={"since": since, "timeout": 4}, timeout=30)

        with ThreadPoolExecutor(max_workers=3) as pool:
            waiting = [pool.submit(poll, i) for i in range(3)]
            wait_for("3 polls waiting", lambda: SLOTS.held() == 3, timeout=20, every=0.05)
            fourth = poll(3)
            assert "long-polls" in error(fourth, 429) and fourth.headers["Retry-After"] == "2"
            # no wait asked, no slot needed
            assert api.get("/changes", token=tokens[3], params={"since": since}).status_code == 200
            assert api.get("/healthz").status_code == 200
            assert [w.result().status_code for w in waiting] == [200, 200, 200]
        assert poll(3).status_code == 200  # the slots were given back


def test_long_poll_slots_never_exceed_half_the_threads() -> None:
    assert Settings(api_threads=4, changes_max_polls=8).long_poll_slots == 2
    assert Settings(api_threads=16, changes_max_polls=8).long_poll_slots == 8
    assert Settings(api_threads=1).long_poll_slots == 0


# --- bounded integers --------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    f"/groups/{HUGE}", f"/users/{BIG}", "/users/0", "/users/-1", f"/tasks/{HUGE}/log",
    f"/spaces/{BIG}/groups", f"/providers/{HUGE}/spaces", f"/users/{HUGE}/keys", f"/users/{BIG}/tokens",
])
def test_ids_outside_the_64_bit_range_are_404(api: Api, path: str) -> None:
    assert error(api.get(path, token=api.root), 404)


def test_huge_ids_in_writes_are_404(api: Api) -> None:
    assert error(api.patch(f"/groups/{HUGE}", token=api.root, json={}), 404)
    assert error(api.delete(f"/spaces/{BIG}/groups/1", token=api.root), 404)
    assert error(api.put(f"/groups/1/children/{BIG}", token=api.root), 404)
    assert error(api.post(f"/providers/{HUGE}/token", token=api.root), 404)
    assert error(api.post(f"/tasks/{BIG}/callback", json={"event": "started", "attempt": 1}), 401)


@pytest.mark.parametrize("path,params,name", [
    ("/groups", {"offset": "9999999999999999999"}, "offset"),
    ("/users", {"limit": "99999999999999999999999"}, "limit"),
    ("/tasks", {"space": str(BIG)}, "space"),
    ("/tasks", {"parent": str(HUGE)}, "parent"),
    ("/tasks/1/log", {"offset": str(BIG)}, "offset"),
    ("/changes", {"since": str(BIG)}, "since"),
    ("/changes", {"timeout": "nan"}, "timeout"),
    ("/changes", {"timeout": "1e999"}, "timeout"),
    ("/groups", {"offset": " 5"}, "offset"),
    ("/groups", {"offset": "1_000"}, "offset"),
    ("/inventory", {"state": ""}, "state"),
    ("/nodes", {"cordoned": "1"}, "cordoned"),
])
def test_query_integers_are_bounded_and_strict(api: Api, path: str, params: dict[str, str], name: str) -> None:
    assert name in error(api.get(path, token=api.root, params=params), 422)


def test_body_integers_are_bounded(api: Api) -> None:
    _, token = api.user_with_token("bounded")
    s = space(api, token, "s")
    p, ptoken = provider(api, "p")
    ticket = support_token(api, token, s["id"])
    assert "size" in error(api.post(f"/providers/{p['id']}/supports", token=ptoken,
                                    json={"token": ticket, "size": 2**70}), 422)
    assert "owner" in error(api.post("/groups", token=api.root, json={"name": "g", "owner": HUGE}), 422)
    assert "space" in error(api.post("/tasks", token=token, json={"name": "shell", "space": BIG}), 422)
    assert "sftp_port" in error(api.post("/providers", token=api.root, json={
        "name": "q", "domain": "q.example.org", "admin_email": "a@q.example.org", "sftp_port": HUGE}), 422)
    # whole numbers written as floats are integers, as JSON Schema counts them; others are not
    ok = api.post(f"/providers/{p['id']}/supports", token=ptoken, json={"token": ticket, "size": float(10 * MIB)})
    assert ok.status_code == 201 and ok.json()["size"] == 10 * MIB
    assert "size" in error(api.put(f"/spaces/{s['id']}/providers/{p['id']}", token=ptoken,
                                   json={"size": 10 * MIB + 0.5}), 422)
    # and a boolean is a boolean
    assert "active" in error(api.post("/users", token=api.root, json={
        "username": "zero", "password": "password123", "active": 0}), 422)


def test_signed_node_bodies_are_bounded(api: Api) -> None:
    wk = SignedNode(api, "wk1", NODES_SECRET)
    assert "pid" in error(wk.register(pid=HUGE), 422)
    assert wk.register().status_code == 201
    assert "resources" in error(wk.heartbeat(resources={"memory": HUGE}), 422)
    assert wk.heartbeat(resources={"memory": 2**40, "cpu": 1.5}).status_code == 200


@pytest.mark.parametrize("raw", [b'{"size": NaN}', b'{"size": Infinity}', b'{"size": 1e999}'])
def test_non_json_numbers_are_400(api: Api, raw: bytes) -> None:
    resp = api.post("/groups", token=api.root, data=raw, headers={"Content-Type": "application/json"})
    assert error(resp, 400)


# --- deep JSON ---------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("path,auth", [("/users", True), ("/groups", True), ("/auth/token", False)])
def test_json_nested_100000_deep_is_400(api: Api, path: str, auth: bool) -> None:
    resp = api.post(path, token=api.root if auth else None, data=b'{"a": ' + DEEP + b"}",
                    headers={"Content-Type": "application/json"})
    assert "deeper than 64" in error(resp, 400)


def test_nesting_is_capped_at_64_levels(api: Api) -> None:
    def body(depth: int) -> bytes:  # the object itself is level 1
        return b'{"name": "deep", "params": {"v": ' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}}"

    at_limit = api.post("/tasks", token=api.root, data=body(64), headers={"Content-Type": "application/json"})
    assert at_limit.status_code == 422, at_limit.text  # parsed; refused for what it says, not its depth
    assert "deeper than 64" in error(api.post("/tasks", token=api.root, data=body(65),
                                              headers={"Content-Type": "application/json"}), 400)
    # brackets inside strings are text, not nesting
    text = '"' + "[" * 200 + '"'
    ok = api.post("/groups", token=api.root, data=('{"name": "g", "x": ' + text + "}").encode(),
                  headers={"Content-Type": "application/json"})
    assert "x" in error(ok, 422)


def test_blank_body_is_not_an_empty_object(api: Api) -> None:
    user = api.make_user("blank")
    assert api.patch(f"/users/{user['id']}", token=api.root).status_code == 200  # no body: no change
    assert error(api.patch(f"/users/{user['id']}", token=api.root, data=b"\x0c",
                           headers={"Content-Type": "application/json"}), 400)


# --- methods -------------------------------------------------------------------------------------

def test_a_literal_path_answers_405_with_its_own_allow(api: Api) -> None:
    for method in ("GET", "DELETE", "OPTIONS", "PUT"):
        resp = api.request(method, "/nodes/register", token=api.root)
        assert error(resp, 405) and resp.headers["Allow"] == "POST", method
    resp = api.request("OPTIONS", "/nodes/wk1", token=api.root)
    assert error(resp, 405) and resp.headers["Allow"] == "DELETE, GET"
    assert api.request("PUT", "/users", token=api.root).headers["Allow"] == "GET, POST"

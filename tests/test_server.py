"""`zonefarm api` as operators run it: the console script, gunicorn, a real port on loopback.

These start the installed ``zonefarm`` command as a subprocess, so they cover the CLI,
settings from the environment and from ``--config``, the secret check, the JSON access
log and a clean stop on SIGTERM, which the in-process ``live_server`` fixture cannot.
SQLite only: the server code path does not depend on the database, and the API tests
already run every route on both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.apiproc import ZONEFARM, ApiProcess, api_env
from tests.support.pg import free_port

SECRETS = {"ZONEFARM_ROOT_SECRET": ROOT_SECRET, "ZONEFARM_NODES_SECRET": NODES_SECRET}


def _upgrade(env: dict[str, str], *extra: str) -> None:
    subprocess.run([ZONEFARM, *extra, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)


def _start(started: list[ApiProcess], tmp_path: Path, env: dict[str, str],
           args: list[str] | None = None) -> ApiProcess:
    port = free_port()
    env = {**env}
    if "--config" not in (args or []):
        env["ZONEFARM_LISTEN"] = f"127.0.0.1:{port}"
    proc = ApiProcess([*(args or []), "api"], env, tmp_path / f"api-{port}.log", port)
    started.append(proc)
    return proc


def test_serves_healthz_and_logs_one_json_line_per_request_without_secrets(
        tmp_path: Path, started: list[ApiProcess]) -> None:
    env = api_env(tmp_path, **SECRETS)
    _upgrade(env)
    server = _start(started, tmp_path, env)
    server.wait_ready()

    health = requests.get(server.url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["schema_version"] >= 1

    auth = {"Authorization": f"Bearer {ROOT_SECRET}"}
    created = requests.post(server.url + "/users", headers=auth, timeout=10,
                            json={"username": "logcheck", "password": "pw-" + NODES_SECRET})
    assert created.status_code == 201, created.text
    listed = requests.get(server.url + "/users?name=logcheck", headers=auth, timeout=5)
    assert listed.status_code == 200 and listed.json()["total"] == 1
    denied = requests.get(server.url + "/users", headers={"Authorization": "Bearer wrong-" + ROOT_SECRET},
                          timeout=5)
    assert denied.status_code == 401
    missing = requests.get(server.url + "/nowhere", headers=auth, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    assert server.stop() == 0
    lines = server.access_lines()
    wanted = [("POST", "/api/v1/users", 201), ("GET", "/api/v1/users", 200),
              ("GET", "/api/v1/users", 401), ("GET", "/api/v1/nowhere", 404)]
    got = [(line["method"], line["path"], line["status"]) for line in lines
           if line["path"] != "/api/v1/healthz"]
    assert got == wanted, server.output()
    for line in lines:
        assert isinstance(line["ms"], (int, float)) and line["ms"] >= 0
    assert lines[-4]["who"] == "root"  # the principal is named, its credential is not
    text = server.output()
    assert ROOT_SECRET not in text and NODES_SECRET not in text
    assert "pw-" not in text  # nor the request body


@pytest.mark.parametrize("root, nodes, named", [
    (None, NODES_SECRET, "ZONEFARM_ROOT_SECRET"),
    ("too-short-123", NODES_SECRET, "ZONEFARM_ROOT_SECRET"),
    (ROOT_SECRET, None, "ZONEFARM_NODES_SECRET"),
    (ROOT_SECRET, "n0d3s-xyz", "ZONEFARM_NODES_SECRET"),
])
def test_refuses_to_start_without_strong_secrets(tmp_path: Path, root: str | None, nodes: str | None,
                                                 named: str) -> None:
    env = api_env(tmp_path)
    env["ZONEFARM_LISTEN"] = f"127.0.0.1:{free_port()}"
    if root is not None:
        env["ZONEFARM_ROOT_SECRET"] = root
    if nodes is not None:
        env["ZONEFARM_NODES_SECRET"] = nodes
    result = subprocess.run([ZONEFARM, "api"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert named in result.stderr and "16" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for secret in (root, nodes):
        if secret:
            assert secret not in result.stderr + result.stdout


def test_config_file_sets_listen_and_secrets(tmp_path: Path, started: list[ApiProcess]) -> None:
    env = api_env(tmp_path)
    port = free_port()
    ini = tmp_path / "zonefarm.ini"
    ini.write_text("[zonefarm]\n"
                   f"listen = 127.0.0.1:{port}\n"
                   f"root_secret = {ROOT_SECRET}\n"
                   f"nodes_secret = {NODES_SECRET}\n"
                   "api_threads = 2\n")
    ini.chmod(0o600)
    _upgrade(env, "--config", str(ini))
    server = _start(started, tmp_path, env, ["--config", str(ini)])
    server.port, server.url = port, f"http://127.0.0.1:{port}/api/v1"
    server.wait_ready()
    ok = requests.get(server.url + "/users", headers={"Authorization": f"Bearer {ROOT_SECRET}"}, timeout=5)
    assert ok.status_code == 200
    assert server.stop() == 0


def test_sigterm_stops_cleanly_and_frees_the_port(tmp_path: Path, started: list[ApiProcess]) -> None:
    env = api_env(tmp_path, **SECRETS, ZONEFARM_API_WORKERS="2")
    _upgrade(env)
    server = _start(started, tmp_path, env)
    server.wait_ready()
    started_at = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started_at < 15
    assert "Traceback" not in server.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=2)
    # no worker outlived the arbiter
    alive = subprocess.run(["pgrep", "-s", str(server.proc.pid)], capture_output=True, text=True)
    assert alive.stdout.strip() == ""


def test_concurrent_writes_on_sqlite_all_succeed(tmp_path: Path, started: list[ApiProcess]) -> None:
    """Many threads creating groups at once: each gets 201, none a 500 "database is locked"."""
    from concurrent.futures import ThreadPoolExecutor

    env = api_env(tmp_path, **SECRETS, ZONEFARM_API_WORKERS="2", ZONEFARM_API_THREADS="8")
    _upgrade(env)
    server = _start(started, tmp_path, env)
    server.wait_ready()

    def create(i: int) -> int:
        with requests.Session() as s:
            statuses = []
            for j in range(6):
                r = s.post(server.url + "/groups", json={"name": f"g-{i}-{j}"}, timeout=30,
                           headers={"Authorization": f"Bearer {ROOT_SECRET}"})
                statuses.append(r.status_code)
            return max(statuses) if set(statuses) != {201} else 201

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(16)))
    assert results == [201] * 16, server.output()[-3000:]
    listed = requests.get(server.url + "/groups?limit=500", headers={"Authorization": f"Bearer {ROOT_SECRET}"},
                          timeout=10)
    assert listed.json()["total"] == 96
    assert server.stop() == 0


def test_route_writes_queue_on_the_sqlite_write_lock(tmp_path: Path) -> None:
    """Another process holding the write lock holds route writes back; nesting does not deadlock."""
    import threading

    from control.core.db import database, init_database, write_transaction
    from control.migrations import upgrade
    from control.registry.models import Group
    from tests.conftest import _close_db

    db_path = tmp_path / "z.db"
    init_database(f"sqlite:///{db_path}", 4)
    try:
        upgrade()
        with database.connection_context(), write_transaction(), write_transaction():
            Group.create(name="nested")  # re-entrant: a savepoint inside the transaction
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1],'a'); fcntl.flock(f, fcntl.LOCK_EX); "
             "print('held', flush=True); sys.stdin.readline()", f"{db_path}-writelock"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            entered = threading.Event()

            def write() -> None:
                with database.connection_context(), write_transaction():
                    entered.set()
                    Group.create(name="after-release")

            worker = threading.Thread(target=write)
            worker.start()
            assert not entered.wait(0.5)  # still queued behind the other process
            holder.communicate("go\n", timeout=10)
            worker.join(timeout=20)
            assert entered.is_set() and not worker.is_alive()
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        with database.connection_context():
            assert sorted(g.name for g in Group.select()) == ["after-release", "nested"]
    finally:
        _close_db()

"""API benchmark: zonefarm against a bare Bottle + peewee app, loaded by wrk on loopback.

For each database (SQLite, and PostgreSQL in a throwaway cluster from tests/support/pg.py)
it serves zonefarm with the real ``zonefarm api`` command and the baseline
(``bench/bare_app.py``) with ``bench/serve.py`` under the very same gunicorn options
(``control.web.server.gunicorn_options``), each on its own copy of the same seeded database.
wrk then runs, at 32 connections:

* read:  ``GET /api/v1/spaces/{id}`` with a user token (the user owns the space);
* write: ``POST /api/v1/groups`` with a user token and a unique name per request.

Runs are short and interleaved (zonefarm, bare, bare, zonefarm, ...) so the machine's noise
hits both alike; the figures are medians over ``--runs``. A run with any non-2xx answer or
socket error is refused. Then the zonefarm read is served once more by gunicorn gthread,
gunicorn sync and waitress (all three up at once, runs interleaved), for the WSGI-server choice.

Finally the effective relations (issue 17) on each database: a seeded registry with 100
levels of nested groups and 10,000 users through 100 groups, served by ``zonefarm api``, and
each effective route asked ``--relations-runs`` times in turn by a user of both; the target
is an answer within 300 ms (p95).

Bulk submission (issue 14) on each database: 1,000 ``shell`` tasks submitted by one client
one ``POST /api/v1/tasks`` at a time, and the same 1,000 in one ``POST /api/v1/tasks/batch``,
``--batch-runs`` times each (interleaved, order alternating), on one ``zonefarm api``; the
ratio of the medians is what one batch saves.

    .venv/bin/python bench/api.py [--runs 3] [--duration 5] [--relations-runs 20] [--json results.json]
    .venv/bin/python bench/api.py --runs 0 --server-runs 0 --batch-runs 0    # the relations alone
    .venv/bin/python bench/api.py --runs 0 --server-runs 0 --relations-runs 0 --batch-runs 3    # batch alone
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.support.pg import PgCluster, free_port  # noqa: E402
from tests.support.procs import stop_group  # noqa: E402

BIN = Path(sys.executable).parent
WRK_DIR = ROOT / "bench" / "wrk"
TARGETS = {"read": 0.80, "write": 0.70}
P99_TARGET_MS = 100.0
SECRET = secrets.token_urlsafe(24)  # fresh per run; the servers need one, nobody uses it


@dataclass
class Fixture:
    """A seeded database: one user with a token who owns one space."""

    url: str
    token: str
    space_id: int


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Samples:
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


def seed(url: str) -> Fixture:
    """Migrate ``url`` and create the benchmark's user, token and space."""
    from control.core.db import database, init_database
    from control.migrations import upgrade
    from control.registry.identity import new_token
    from control.registry.models import Space, SpaceUser, User

    init_database(url, 2)
    upgrade()
    with database.connection_context(), database.atomic():
        user = User.create(username="bench", email="bench@example.org")
        token, _ = new_token("user", user=user)
        space = Space.create(name="bench-space")
        SpaceUser.create(space=space, user=user, role="owner")
    database.obj.close_all()
    return Fixture(url, token, space.id)


def server_env(url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZONEFARM_")}
    env.update({"ZONEFARM_DATABASE": url, "ZONEFARM_LISTEN": f"127.0.0.1:{port}",
                "ZONEFARM_ROOT_SECRET": SECRET, "ZONEFARM_NODES_SECRET": SECRET,
                "ZONEFARM_LOG_LEVEL": "INFO"})
    return env


def start(name: str, argv: list[str], url: str, workdir: Path) -> Server:
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=server_env(url, port), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Server(name, proc, port, log)


def wait_ready(server: Server, fx: Fixture, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    url = f"{server.base}/api/v1/spaces/{fx.space_id}"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited {server.proc.returncode}:\n{server.log.read_text()}")
        try:
            resp = requests.get(url, headers={"Authorization": f"Bearer {fx.token}"}, timeout=10)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
            continue
        if resp.status_code != 200:
            raise SystemExit(f"{server.name}: GET {url} answered {resp.status_code}: {resp.text}")
        return
    raise SystemExit(f"{server.name} not ready within {timeout}s:\n{server.log.read_text()}")


def stop(server: Server) -> None:
    stop_group(server.proc, grace=20)


@contextmanager
def serving(name: str, argv: list[str], fx: Fixture, workdir: Path) -> Iterator[Server]:
    server = start(name, argv, fx.url, workdir)
    try:
        wait_ready(server, fx)
        yield server
    finally:
        stop(server)


def wrk(server: Server, fx: Fixture, kind: str, duration: int, connections: int,
        threads: int) -> tuple[float, float]:
    """One wrk run; returns (requests/s, p99 ms). Refuses runs with errors."""
    env = {**os.environ, "BENCH_TOKEN": fx.token,
           "BENCH_PATH": f"/api/v1/spaces/{fx.space_id}" if kind == "read" else "/api/v1/groups",
           "BENCH_PREFIX": f"b{secrets.token_hex(4)}"}
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
            "-s", str(WRK_DIR / f"{kind}.lua"), server.base]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    errors = {k: result[k] for k in ("connect", "read", "write", "status", "timeout") if result[k]}
    if errors:
        statuses = {}
        for ln in server.log.read_text(errors="replace").splitlines():
            if ln.startswith("{") and '"status"' in ln:
                st = json.loads(ln)["status"]
                statuses[st] = statuses.get(st, 0) + 1
        tail = "\n".join(server.log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{server.name} {kind}: wrk saw errors {errors}; statuses logged {statuses}\n{tail}")
    return result["requests"] / (result["duration_us"] / 1e6), result["p99_us"] / 1000


def bench_database(label: str, urls: dict[str, str], args: argparse.Namespace,
                   workdir: Path) -> dict[str, dict[str, Samples]]:
    """Interleaved runs of both apps, each on its own seeded copy of the database."""
    fixtures = {app: seed(url) for app, url in urls.items()}
    argvs = {"zonefarm": [str(BIN / "zonefarm"), "api"],
             "bare": [sys.executable, str(ROOT / "bench" / "serve.py"), "--app", "bare", "--server", "gthread"]}
    results: dict[str, dict[str, Samples]] = {app: {"read": Samples(), "write": Samples()} for app in urls}
    with serving("zonefarm", argvs["zonefarm"], fixtures["zonefarm"], workdir) as zf, \
            serving("bare", argvs["bare"], fixtures["bare"], workdir) as bare:
        servers = {"zonefarm": zf, "bare": bare}
        for app, server in servers.items():  # warm up: imports, pools, page cache
            for kind in ("read", "write"):
                wrk(server, fixtures[app], kind, 1, args.connections, args.wrk_threads)
        for run in range(args.runs):
            order = ["zonefarm", "bare"] if run % 2 == 0 else ["bare", "zonefarm"]
            for kind in ("read", "write"):
                for app in order:
                    rps, p99 = wrk(servers[app], fixtures[app], kind, args.duration, args.connections,
                                   args.wrk_threads)
                    results[app][kind].rps.append(rps)
                    results[app][kind].p99_ms.append(p99)
                    print(f"  {label:8} run {run + 1} {kind:5} {app:8} {rps:8.0f} req/s  p99 {p99:6.1f} ms",
                          flush=True)
    return results


def bench_servers(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Samples]:
    """The zonefarm read under each WSGI server candidate, same settings, runs interleaved."""
    fx = seed(url)
    kinds = ("gthread", "sync", "waitress")
    out: dict[str, Samples] = {kind: Samples() for kind in kinds}
    with ExitStack() as stack:
        servers = {}
        for kind in kinds:
            argv = [sys.executable, str(ROOT / "bench" / "serve.py"), "--app", "zonefarm", "--server", kind]
            servers[kind] = stack.enter_context(serving(kind, argv, fx, workdir))
            wrk(servers[kind], fx, "read", 1, args.connections, args.wrk_threads)
        for run in range(args.server_runs):
            for kind in kinds[run % 3:] + kinds[:run % 3]:
                rps, p99 = wrk(servers[kind], fx, "read", args.duration, args.connections, args.wrk_threads)
                out[kind].rps.append(rps)
                out[kind].p99_ms.append(p99)
                print(f"  server   run {run + 1} {kind:8} {rps:8.0f} req/s  p99 {p99:6.1f} ms", flush=True)
    return out


RELATIONS_TARGET_MS = 300.0
DEPTH, WIDE_GROUPS, WIDE_USERS_PER_GROUP = 100, 100, 100


@dataclass
class Relations:
    """The seeded registry of the relations case and the routes asked of it."""

    fixture: Fixture
    routes: dict[str, str]


def seed_relations(url: str) -> Relations:
    """Deep: space ``deep`` holds G000, nested 100 levels down to G099, which holds user ``deepest``.
    Wide: space ``wide`` holds group ``top``, which holds 100 groups of 100 users (10,000 users).
    User ``bench`` owns both spaces and is in G099 and ``top``; rows go in with bulk inserts."""
    from control.core.db import database, init_database
    from control.migrations import upgrade
    from control.registry.identity import new_token
    from control.registry.models import Group, GroupChild, GroupUser, Space, SpaceGroup, SpaceUser, User

    init_database(url, 2)
    upgrade()
    with database.connection_context(), database.atomic():
        bench = User.create(username="bench")
        token, _ = new_token("user", user=bench)
        deepest = User.create(username="deepest")
        chain = [Group.create(name=f"G{i:03d}") for i in range(DEPTH)]
        GroupChild.insert_many([(a.id, b.id) for a, b in zip(chain, chain[1:], strict=False)],
                               fields=[GroupChild.parent, GroupChild.child]).execute()
        deep = Space.create(name="deep")
        SpaceGroup.create(space=deep, group=chain[0], role="member")
        top = Group.create(name="top")
        wide = Space.create(name="wide")
        SpaceGroup.create(space=wide, group=top, role="member")
        leaves = [Group.create(name=f"W{i:03d}") for i in range(WIDE_GROUPS)]
        GroupChild.insert_many([(top.id, g.id) for g in leaves], fields=[GroupChild.parent, GroupChild.child]).execute()
        User.insert_many([(f"u{i:05d}", f"User {i}") for i in range(WIDE_GROUPS * WIDE_USERS_PER_GROUP)],
                         fields=[User.username, User.full_name]).execute()
        ids = [u.id for u in User.select(User.id).where(User.username.startswith("u")).order_by(User.id)]
        rows = [(leaves[i // WIDE_USERS_PER_GROUP].id, uid, "member") for i, uid in enumerate(ids)]
        for start in range(0, len(rows), 1000):
            GroupUser.insert_many(rows[start:start + 1000],
                                  fields=[GroupUser.group, GroupUser.user, GroupUser.role]).execute()
        GroupUser.insert_many([(chain[-1].id, deepest.id, "member"), (chain[-1].id, bench.id, "member"),
                               (top.id, bench.id, "member")],
                              fields=[GroupUser.group, GroupUser.user, GroupUser.role]).execute()
        for space in (deep, wide):
            SpaceUser.create(space=space, user=bench, role="owner")
        one = ids[len(ids) // 2]
    database.obj.close_all()
    routes = {
        "deep: space effective_users": f"/spaces/{deep.id}/effective_users",
        "deep: membership chain (102 links)": f"/spaces/{deep.id}/effective_users/{deepest.id}/membership",
        "deep: effective_children (99)": f"/groups/{chain[0].id}/effective_children",
        "deep: effective_parents (99)": f"/groups/{chain[-1].id}/effective_parents",
        "deep: user effective_groups": f"/users/{deepest.id}/effective_groups",
        "deep: user effective_spaces": f"/users/{deepest.id}/effective_spaces",
        "wide: space effective_users (10,000)": f"/spaces/{wide.id}/effective_users",
        "wide: ... ?name=u09&offset=50": f"/spaces/{wide.id}/effective_users?name=u09&offset=50",
        "wide: group effective_users (10,000)": f"/groups/{top.id}/effective_users",
        "wide: membership chain": f"/spaces/{wide.id}/effective_users/{one}/membership",
        "wide: effective_children (100)": f"/groups/{top.id}/effective_children",
        "wide: user effective_spaces": f"/users/{one}/effective_spaces",
        "both: bench's effective_groups (101)": f"/users/{bench.id}/effective_groups",
    }
    return Relations(Fixture(url, token, deep.id), routes)


def bench_relations(label: str, url: str, runs: int, workdir: Path) -> dict[str, Samples]:
    """Each route ``runs`` times in turn (after one warm-up round), by the ``bench`` user."""
    rel = seed_relations(url)
    out: dict[str, Samples] = {name: Samples() for name in rel.routes}
    with serving("zonefarm", [str(BIN / "zonefarm"), "api"], rel.fixture, workdir) as server:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {rel.fixture.token}"
        for run in range(runs + 1):
            for name, path in rel.routes.items():
                started = time.perf_counter()
                resp = session.get(server.base + "/api/v1" + path, timeout=30)
                ms = (time.perf_counter() - started) * 1000
                if resp.status_code != 200:
                    raise SystemExit(f"relations {label}: GET {path} answered {resp.status_code}: {resp.text}")
                if run:
                    out[name].p99_ms.append(ms)
    for name, sample in out.items():
        print(f"  {label:8} {name:40} median {statistics.median(sample.p99_ms):6.1f} ms  "
              f"p95 {_p95(sample.p99_ms):6.1f} ms  max {max(sample.p99_ms):6.1f} ms", flush=True)
    return out


BATCH_SIZE = 1000


def bench_batch(label: str, url: str, runs: int, workdir: Path) -> dict[str, list[float]]:
    """Seconds to submit ``BATCH_SIZE`` tasks one POST at a time and in one batch, ``runs`` times each."""
    fx = seed(url)
    out: dict[str, list[float]] = {"single": [], "batch": []}
    with serving("zonefarm", [str(BIN / "zonefarm"), "api"], fx, workdir) as server:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {SECRET}"  # root: no grant needed, no fair-use limit
        tasks = server.base + "/api/v1/tasks"
        for run in range(runs):
            for kind in ("single", "batch") if run % 2 == 0 else ("batch", "single"):
                specs = [{"name": "shell", "params": {"argv": ["true", f"{kind}-{run}-{i}"]}}
                         for i in range(BATCH_SIZE)]
                started = time.perf_counter()
                if kind == "single":
                    for spec in specs:
                        resp = session.post(tasks, json=spec, timeout=60)
                        if resp.status_code != 201:
                            raise SystemExit(f"batch {label}: POST /tasks answered {resp.status_code}: {resp.text}")
                else:
                    resp = session.post(tasks + "/batch", json={"tasks": specs}, timeout=600)
                    if resp.status_code != 201 or resp.json()["count"] != BATCH_SIZE:
                        raise SystemExit(f"batch {label}: POST /tasks/batch answered {resp.status_code}: "
                                         f"{resp.text[:2000]}")
                out[kind].append(time.perf_counter() - started)
            print(f"  {label:8} run {run + 1}: {BATCH_SIZE} single POSTs {out['single'][-1]:6.2f} s, "
                  f"one batch {out['batch'][-1]:6.2f} s", flush=True)
    return out


def summarise_batch(results: dict[str, dict[str, list[float]]]) -> tuple[list[str], dict[str, Any]]:
    lines = [f"| database | {BATCH_SIZE} single POSTs, s (median) | one batch of {BATCH_SIZE}, s (median) "
             "| single / batch |", "| --- | ---: | ---: | ---: |"]
    data: dict[str, Any] = {}
    for db, runs in results.items():
        single, batch = statistics.median(runs["single"]), statistics.median(runs["batch"])
        lines.append(f"| {db} | {single:.2f} | {batch:.2f} | {single / batch:.1f}x |")
        data[f"batch.{db}"] = {**runs, "ratio": single / batch}
    return lines, data


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarise_relations(results: dict[str, dict[str, Samples]]) -> tuple[list[str], dict[str, Any], bool]:
    lines = ["| database | route | median ms | p95 ms (< 300) | max ms |", "| --- | --- | ---: | ---: | ---: |"]
    data: dict[str, Any] = {}
    ok = True
    for db, routes in results.items():
        for name, sample in routes.items():
            p95 = _p95(sample.p99_ms)
            met = p95 < RELATIONS_TARGET_MS
            ok &= met
            lines.append(f"| {db} | {name} | {statistics.median(sample.p99_ms):.1f} | {p95:.1f} "
                         f"{'met' if met else 'MISSED'} | {max(sample.p99_ms):.1f} |")
            data[f"relations.{db}.{name}"] = {"ms": sample.p99_ms, "p95": p95, "met": met}
    return lines, data, ok


def summarise(results: dict[str, dict[str, dict[str, Samples]]]) -> tuple[list[str], dict[str, Any], bool]:
    lines = ["| database | load | zonefarm req/s | bare req/s | ratio (target) | zonefarm p99 ms (< 100) "
             "| bare p99 ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    data: dict[str, Any] = {}
    ok = True
    for db, per_app in results.items():
        for kind in ("read", "write"):
            zf, bare = per_app["zonefarm"][kind], per_app["bare"][kind]
            zf_rps, bare_rps = statistics.median(zf.rps), statistics.median(bare.rps)
            zf_p99, bare_p99 = statistics.median(zf.p99_ms), statistics.median(bare.p99_ms)
            ratio = zf_rps / bare_rps
            ratio_met, p99_met = ratio >= TARGETS[kind], zf_p99 < P99_TARGET_MS
            met = ratio_met and p99_met
            ok &= met
            lines.append(f"| {db} | {kind} | {zf_rps:.0f} | {bare_rps:.0f} | {ratio:.0%} (>= {TARGETS[kind]:.0%}) "
                         f"{'met' if ratio_met else 'MISSED'} | {zf_p99:.1f} {'met' if p99_met else 'MISSED'} "
                         f"| {bare_p99:.1f} |")
            data[f"{db}.{kind}"] = {"zonefarm_rps": zf.rps, "bare_rps": bare.rps, "zonefarm_p99_ms": zf.p99_ms,
                                    "bare_p99_ms": bare.p99_ms, "ratio": ratio, "met": met}
    return lines, data, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per app and load (median)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--server-runs", type=int, default=3, help="runs per WSGI server; 0 skips the comparison")
    parser.add_argument("--relations-runs", type=int, default=20,
                        help="requests per effective-relations route and database; 0 skips them")
    parser.add_argument("--batch-runs", type=int, default=3,
                        help="runs of 1,000 single POSTs against one batch, per database; 0 skips them")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if (args.runs or args.server_runs) and shutil.which("wrk") is None:
        raise SystemExit("wrk not found; run `make deps` (Debian package wrk)")

    started = time.monotonic()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="zf-bench-"))
    results: dict[str, dict[str, dict[str, Samples]]] = {}
    server_results: dict[str, Samples] = {}
    relations: dict[str, dict[str, Samples]] = {}
    batches: dict[str, dict[str, list[float]]] = {}
    cluster: PgCluster | None = None

    def database_url(db: str, name: str) -> str:
        nonlocal cluster
        if db == "sqlite":
            return f"sqlite:///{workdir / f'{name}.db'}"
        if db == "postgres":
            if cluster is None:
                cluster = PgCluster().start()
            cluster.sql(f"CREATE DATABASE bench_{name}")
            return cluster.url(f"bench_{name}")
        raise SystemExit(f"unknown database {db!r}")

    databases = [d for d in args.databases.split(",") if d]
    try:
        for db in databases if args.runs else []:
            print(f"{db}: zonefarm vs bare, {args.runs} x {args.duration}s per load, "
                  f"{args.connections} connections", flush=True)
            urls = {app: database_url(db, app) for app in ("zonefarm", "bare")}
            results[db] = bench_database(db, urls, args, workdir)
        if args.server_runs:
            print("WSGI server choice: zonefarm read on SQLite", flush=True)
            server_results = bench_servers(f"sqlite:///{workdir / 'servers.db'}", args, workdir)
        for db in databases if args.relations_runs else []:
            print(f"{db}: effective relations, {DEPTH} levels deep and {WIDE_GROUPS * WIDE_USERS_PER_GROUP} users "
                  f"through {WIDE_GROUPS} groups, {args.relations_runs} requests per route", flush=True)
            relations[db] = bench_relations(db, database_url(db, "relations"), args.relations_runs, workdir)
        for db in databases if args.batch_runs else []:
            print(f"{db}: {BATCH_SIZE} tasks one POST at a time vs one POST /tasks/batch, {args.batch_runs} runs",
                  flush=True)
            batches[db] = bench_batch(db, database_url(db, "batch"), args.batch_runs, workdir)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    lines, data, ok = summarise(results)
    if results:
        print()
        print("\n".join(lines))
    if server_results:
        base = statistics.median(server_results["gthread"].rps)
        print()
        print("| WSGI server (zonefarm read, SQLite) | req/s | p99 ms | vs gunicorn gthread |")
        print("| --- | ---: | ---: | ---: |")
        for kind, s in server_results.items():
            rps = statistics.median(s.rps)
            print(f"| {kind} | {rps:.0f} | {statistics.median(s.p99_ms):.1f} | {rps / base:.2f}x |")
        data["servers"] = {k: {"rps": s.rps, "p99_ms": s.p99_ms} for k, s in server_results.items()}
    if relations:
        rel_lines, rel_data, rel_ok = summarise_relations(relations)
        print()
        print("\n".join(rel_lines))
        data.update(rel_data)
        ok &= rel_ok
    if batches:
        batch_lines, batch_data = summarise_batch(batches)
        print()
        print("\n".join(batch_lines))
        data.update(batch_data)
    load_after = os.getloadavg()
    print(f"\nload average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores")
    data["loadavg"] = {"before": load_before, "after": load_after}
    print(f"total {time.monotonic() - started:.0f}s; targets: reads >= 80% of bare, writes >= 70%, "
          f"p99 < {P99_TARGET_MS:.0f} ms, effective relations p95 < {RELATIONS_TARGET_MS:.0f} ms: "
          f"{'met' if ok else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 1 if (args.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Dashboard page budget: server time of every page with 10,000 tasks in the database.

Seeds a database (SQLite, and PostgreSQL in a throwaway cluster with ``--databases``)
with ``--tasks`` tasks spread over states, queues, nodes and owners, each with its
events and a log, plus users, nested groups, spaces, providers and their changes. It
serves the real app (``control.web.app.build_app``) on loopback, logs in through the
dashboard's forms as the administrator and as an ordinary user, and requests each page
``--runs`` times. The figure is the server's own time from the JSON access log (the
``ms`` of each request line), so the client and the network are not counted. The budget
is 300 ms per page; ``--strict`` exits 1 when a page's worst run misses it.

    .venv/bin/python bench/dashboard.py [--tasks 10000] [--runs 5] [--databases sqlite postgres] [--pages /registry]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from control.core.config import Settings  # noqa: E402
from control.core.db import database, init_database  # noqa: E402
from control.migrations import upgrade  # noqa: E402
from tests.support.dashboard import Visitor  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402

BUDGET_MS = 300.0
SECRET = "bench-dashboard-root-secret-0123456789"
STATES = ["succeeded"] * 60 + ["failed"] * 10 + ["cancelled"] * 5 + ["timed_out"] * 2 + ["queued"] * 15 \
    + ["running"] * 5 + ["assigned"] * 2 + ["lost"] * 1
QUEUES = ["default", "default", "default", "gpu", "bigmem", "io"]


def seed(url: str, tasks: int) -> dict[str, Any]:
    """Bulk-insert the fixture (a benchmark's setup, not what it measures)."""
    from control.farm.models import Node, Task, TaskEvent, TaskLog
    from control.registry import feed
    from control.registry.models import Group, GroupChild, GroupUser, Provider, Space, SpaceUser, Support, User
    from control.registry.passwords import hash_password

    init_database(url, 4)
    upgrade()
    rng = random.Random(13)
    now = time.time()
    with database.connection_context(), database.atomic():
        password = hash_password("password123")
        users = [User.create(username=f"user{i}", full_name=f"User {i}", email=f"u{i}@example.org",
                             password_hash=password) for i in range(20)]
        for u in users:
            feed.record("user", u.id, "create", {"username": u.username}, user_id=u.id)
        groups = [Group.create(name=f"group{i}") for i in range(6)]
        for i, g in enumerate(groups):
            GroupUser.create(group=g, user=users[i], role="owner")
            GroupUser.create(group=g, user=users[i + 6], role="member")
            if i:
                GroupChild.create(parent=groups[i - 1], child=g)
            feed.record("group", g.id, "create", {"name": g.name}, group_id=g.id)
        spaces = [Space.create(name=f"space{i}") for i in range(4)]
        providers = [Provider.create(name=f"prov{i}", domain=f"p{i}.example.org", admin_email=f"a@p{i}.example.org")
                     for i in range(3)]
        for i, s in enumerate(spaces):
            SpaceUser.create(space=s, user=users[0], role="owner" if i == 0 else "member")
            Support.create(space=s, provider=providers[i % 3], size=(i + 1) * 2**30)
            feed.record("space", s.id, "create", {"name": s.name}, space_id=s.id)
        nodes = [Node.create(name=f"wk{i}", region=("eu", "us")[i % 2], queues=["default", QUEUES[3 + i % 3]],
                             concurrency=8, resources={"cpu": 8, "memory": 32 * 2**30, "disk": 500 * 2**30},
                             workdir="/var/lib/zonefarm", config_path="/etc/zonefarm/node.ini")
                 for i in range(12)]
        rows, events, logs = [], [], []
        for i in range(tasks):
            state = rng.choice(STATES)
            created = now - (tasks - i) * 30
            node = rng.choice(nodes) if state not in ("queued",) else None
            owner = users[i % len(users)].id if i % 10 else None
            rows.append({"name": "shell", "params": {"argv": ["echo", str(i)]}, "queue": rng.choice(QUEUES),
                         "target_kind": "any", "owner": owner, "state": state,
                         "space_id": spaces[i % 4].id if i % 7 == 0 else None,
                         "node": node.id if node and state in ("running", "assigned") else None,
                         "last_node": node.name if node else None, "attempt": 0 if state == "queued" else 1,
                         "created_at": created, "assigned_at": created + 1 if node else None,
                         "started_at": created + 2 if node else None,
                         "finished_at": created + 20 if state in ("succeeded", "failed", "cancelled", "timed_out")
                         else None, "reason": "exit code 0" if state == "succeeded" else ""})
        for chunk in range(0, len(rows), 500):
            Task.insert_many(rows[chunk:chunk + 500]).execute()
        for task in Task.select(Task.id, Task.state, Task.created_at).tuples():
            tid, state, created = task
            events.append({"task": tid, "ts": created, "from_state": None, "to_state": "queued", "reason": "submitted"})
            if state != "queued":
                events += [{"task": tid, "ts": created + 1, "from_state": "queued", "to_state": "assigned",
                            "reason": "claimed"},
                           {"task": tid, "ts": created + 2, "from_state": "assigned", "to_state": "running",
                            "reason": "started"}]
                logs.append({"task": tid, "seq": 1, "start": 0, "ts": created + 3, "text": f"output of {tid}\n" * 20})
            if state not in ("queued", "running", "assigned"):
                events.append({"task": tid, "ts": created + 20, "from_state": "running", "to_state": state,
                               "reason": state})
        for chunk in range(0, len(events), 500):
            TaskEvent.insert_many(events[chunk:chunk + 500]).execute()
        for chunk in range(0, len(logs), 500):
            TaskLog.insert_many(logs[chunk:chunk + 500]).execute()
        sample = Task.select(Task.id).where(Task.owner == users[1].id, Task.state == "succeeded").first().id
        waiting = Task.select(Task.id).where(Task.state == "queued").order_by(Task.id).first().id
    database.obj.close_all()
    return {"user": "user1", "task": sample, "queued": waiting}


class ServerTimes(logging.Handler):
    """The ``ms`` of each access-log line, by path and query."""

    def __init__(self) -> None:
        super().__init__()
        self.last: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = json.loads(record.getMessage())["ms"]


def measure(url: str, tasks: int, runs: int, only: list[str] | None = None) -> list[dict[str, Any]]:
    fx = seed(url, tasks)
    tmp = Path(tempfile.mkdtemp(prefix="zf-bench-dash-"))
    settings = Settings(database=url, root_secret=SECRET, nodes_secret=SECRET, data_dir=str(tmp), db_pool_size=4)
    from control.web.app import build_app

    times = ServerTimes()
    access = logging.getLogger("zonefarm.access")
    access.addHandler(times)
    access.setLevel(logging.INFO)
    access.propagate = False
    server = LiveServer(build_app(settings)).start()
    out = []
    try:
        root = Visitor(server.url)
        root.login_root(SECRET)
        user = Visitor(server.url)
        user.login(fx["user"])
        pages = ["/tasks", "/tasks?state=queued", "/tasks?state=succeeded&queue=gpu", "/tasks?owner=user3",
                 "/tasks?within=24h", "/tasks?offset=5000", "/tasks/live?v=x", f"/tasks/{fx['task']}",
                 f"/tasks/{fx['task']}/live?offset=0", f"/tasks/{fx['queued']}", "/submit", "/nodes",
                 "/queues", "/registry/users", "/registry/groups", "/registry/spaces", "/registry/providers",
                 "/changes"]
        if only:  # pages named on the command line, as they start (e.g. /registry)
            pages = [p for p in pages if any(p.startswith(prefix) for prefix in only)]
        for who, visitor in (("root", root), ("user", user)):
            for page in pages:
                samples = []
                for n in range(runs + 1):
                    resp = visitor.get(page, headers={"HX-Request": "true"} if "/live" in page else {})
                    if resp.status_code not in (200, 204):
                        raise SystemExit(f"{who} {page}: {resp.status_code} {resp.text[:300]}")
                    if n:  # the first run warms caches (templates, schemas)
                        samples.append(times.last or 0.0)
                out.append({"who": who, "page": page, "median_ms": round(statistics.median(samples), 1),
                            "max_ms": round(max(samples), 1)})
    finally:
        server.stop()
        access.removeHandler(times)
        database.obj.close_all()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--databases", nargs="+", default=["sqlite"], choices=["sqlite", "postgres"])
    parser.add_argument("--pages", nargs="+", metavar="PREFIX", help="only the pages starting with these")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--strict", action="store_true", help=f"exit 1 when a page's worst run passes {BUDGET_MS} ms")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for db in args.databases:
        if db == "sqlite":
            path = Path(tempfile.mkdtemp(prefix="zf-bench-dash-db-")) / "zonefarm.db"
            results[db] = measure(f"sqlite:///{path}", args.tasks, args.runs, args.pages)
        else:
            from tests.support.pg import PgCluster
            cluster = PgCluster().start()
            try:
                cluster.sql("CREATE DATABASE zf_bench_dash")
                results[db] = measure(cluster.url("zf_bench_dash"), args.tasks, args.runs, args.pages)
            finally:
                cluster.stop()
    worst = 0.0
    for db, rows in results.items():
        print(f"\n{db}: {args.tasks} tasks, server time per page over {args.runs} runs (budget {BUDGET_MS:.0f} ms)")
        print(f"{'who':<5} {'page':<40} {'median ms':>10} {'max ms':>8}")
        for r in rows:
            flag = "  OVER" if r["max_ms"] > BUDGET_MS else ""
            print(f"{r['who']:<5} {r['page']:<40} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f}{flag}")
            worst = max(worst, r["max_ms"])
    print(f"\nslowest page: {worst:.1f} ms (budget {BUDGET_MS:.0f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": args.tasks, "runs": args.runs, "results": results}, indent=2))
    return 1 if args.strict and worst > BUDGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())

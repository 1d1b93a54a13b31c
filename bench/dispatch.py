"""Dispatch benchmark: 1,000 ``shell`` tasks running ``true`` over 50 simulated nodes, end to end.

Everything is real: ``zonefarm api`` (gunicorn, SQLite), ``zonefarm dispatcher`` running
ansible-runner jobs, 50 nodes registered with signed requests (local connection,
concurrency 20 each, own work dir and 0600 INI), detached runners calling back.

* **Batched** (what zonefarm does): tasks per second from the first submit to the last
  finish, p50/p95 submit->started and submit->finished, peak RSS of the API processes and
  of the dispatcher process, and the size of the dispatcher's job directories at the end.
* **Idle latency**: single tasks submitted one at a time on the idle farm; p50
  submit->started (target <= 2 s).
* Tasks are submitted by an ordinary user holding a group grant for ``shell`` on queue
  ``bench``, so each submission pays for the grant check as a real user's does; the
  per-user fair-use limits are off (``user_max_queued`` and ``user_max_running`` 0), since
  the burst is the point.
* **Baseline** (naive, in the same run): the same dispatcher with ``--claim-limit 1``, so
  every task gets its own ansible-runner job, i.e. one ``ansible-playbook`` process per
  task, on a sample of ``--baseline`` tasks (>= 20). The ratio of the two throughputs is
  printed (target >= 25x).

    .venv/bin/python bench/dispatch.py [--tasks 1000] [--nodes 50] [--concurrency 20] [--baseline 20]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from control.node.agent import register  # noqa: E402
from control.node.config import load_node_config, write_node_config  # noqa: E402
from control.node.signing import derive_node_key  # noqa: E402
from tests.support.pg import free_port  # noqa: E402
from tests.support.procs import stop_group  # noqa: E402

BIN = Path(sys.executable).parent
ROOT_SECRET = secrets.token_urlsafe(24)
NODES_SECRET = secrets.token_urlsafe(24)
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
TARGET_RATIO = 25.0
TARGET_IDLE_P50 = 2.0
TARGET_RSS_MB = 200.0


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(p) for p in fh.read().split())
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    """Peak RSS per role: the API (largest gunicorn process, and all of them summed) and
    the dispatcher process itself (its ansible-playbook children are reported apart)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.api_pid = 0
        self.dispatcher_pid = 0
        self.peak = {"api_process": 0, "api_total": 0, "dispatcher": 0, "ansible_job": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            if self.api_pid:
                procs = [self.api_pid, *children(self.api_pid)]
                sizes = [rss_kb(p) for p in procs]
                self.peak["api_process"] = max(self.peak["api_process"], *sizes)
                self.peak["api_total"] = max(self.peak["api_total"], sum(sizes))
            if self.dispatcher_pid:
                self.peak["dispatcher"] = max(self.peak["dispatcher"], rss_kb(self.dispatcher_pid))
                tree, stack = 0, children(self.dispatcher_pid)
                while stack:
                    pid = stack.pop()
                    tree += rss_kb(pid)
                    stack.extend(children(pid))
                self.peak["ansible_job"] = max(self.peak["ansible_job"], tree)


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.work = workdir
        self.db = workdir / "zonefarm.db"
        self.data = workdir / "data"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {ROOT_SECRET}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.node_dirs: list[Path] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZONEFARM_")}
        env.update(ZONEFARM_DATABASE=f"sqlite:///{self.db}", ZONEFARM_DATA_DIR=str(self.data),
                   ZONEFARM_LISTEN=f"127.0.0.1:{self.port}", ZONEFARM_LOG_LEVEL="WARNING",
                   ZONEFARM_TASK_LEASE="60", ZONEFARM_DISPATCH_INTERVAL="0.2", ZONEFARM_ARTIFACTS_KEEP="20",
                   ZONEFARM_NODE_LEASE="3600",  # no node agents heartbeat here: the nodes are simulated
                   ZONEFARM_USER_MAX_QUEUED="0", ZONEFARM_USER_MAX_RUNNING="0")  # the burst is the point
        return env

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_api(self) -> subprocess.Popen[bytes]:
        subprocess.run([str(BIN / "zonefarm"), "db", "upgrade"], env=self.env(), check=True, capture_output=True)
        env = {**self.env(), "ZONEFARM_ROOT_SECRET": ROOT_SECRET, "ZONEFARM_NODES_SECRET": NODES_SECRET}
        proc = self.start("api", [str(BIN / "zonefarm"), "api"], env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.session.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    return proc
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"API exited:\n{(self.work / 'api.log').read_text()}")
            time.sleep(0.2)
        raise SystemExit("API not ready in 60 s")

    def become_submitter(self) -> None:
        """Root makes a user, a group holding a grant for shell on queue bench, and submits as that user."""
        def call(method: str, path: str, **kw: Any) -> Any:
            resp = self.session.request(method, f"{self.base}{path}", timeout=30, **kw)
            if resp.status_code not in (200, 201):
                raise SystemExit(f"{method} {path} answered {resp.status_code}: {resp.text}")
            return resp.json()

        password = secrets.token_urlsafe(16)
        user = call("POST", "/users", json={"username": "bencher", "password": password})
        team = call("POST", "/groups", json={"name": "bench-team"})
        call("PUT", f"/groups/{team['id']}/users/{user['id']}", json={"role": "member"})
        call("POST", "/grants", json={"group": team["id"], "task_type": "shell", "queue": "bench"})
        token = call("POST", "/auth/token", data={"grant_type": "password", "username": "bencher",
                                                  "password": password})["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"

    def start_dispatcher(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(name, [str(BIN / "zonefarm"), "dispatcher", "--ident", name, *extra], self.env())

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_group(proc, grace=60)

    def add_nodes(self, count: int, concurrency: int) -> None:
        for i in range(1, count + 1):
            base = self.work / "nodes" / f"n{i:03d}"
            config = write_node_config(
                base / "node.ini", name=f"n{i:03d}", api_url=f"http://127.0.0.1:{self.port}",
                node_key=derive_node_key(NODES_SECRET, f"n{i:03d}"), concurrency=concurrency,
                workdir=str(base / "work"),
                ansible_connection="local", ansible_host="127.0.0.1", ansible_user="root", python=sys.executable,
                queues="bench")
            register(load_node_config(config))
            self.node_dirs.append(base / "work")

    def submit(self, count: int, queue: str = "bench") -> list[int]:
        body = {"name": "shell", "params": {"argv": ["true"]}, "queue": queue, "max_attempts": 1}

        def one(_: int) -> int:
            resp = self.session.post(f"{self.base}/tasks", json=body, timeout=30)
            if resp.status_code != 201:
                raise SystemExit(f"submit answered {resp.status_code}: {resp.text}")
            return int(resp.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))

    def wait_done(self, ids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = set(ids)
        while time.monotonic() < deadline:
            with sqlite3.connect(self.db, timeout=30) as conn:
                marks = ",".join("?" * len(want))
                done = {r[0] for r in conn.execute(
                    f"SELECT id FROM task WHERE id IN ({marks}) AND state IN ('succeeded','failed','cancelled',"  # noqa: S608
                    "'timed_out')", list(want))}
            want -= done
            if not want:
                return
            time.sleep(0.5)
        raise SystemExit(f"{len(want)} tasks not finished within {timeout}s")

    def times(self, ids: list[int]) -> list[tuple[float, float | None, float | None, str]]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            marks = ",".join("?" * len(ids))
            return list(conn.execute(
                f"SELECT created_at, started_at, finished_at, state FROM task WHERE id IN ({marks})",  # noqa: S608
                ids))

    def cleanup(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        for work in self.node_dirs:
            for pid_file in work.glob("tasks/*/*/runner.pid"):
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    sampler = RssSampler()
    api = bench.start_api()
    sampler.api_pid = api.pid
    sampler.start()
    bench.add_nodes(args.nodes, args.concurrency)
    bench.become_submitter()
    print(f"{args.nodes} nodes registered (concurrency {args.concurrency})", flush=True)

    # baseline: one job (one ansible-playbook) per task
    naive = bench.start_dispatcher("naive", "--claim-limit", "1")
    t0 = time.time()
    base_ids = bench.submit(args.baseline)
    bench.wait_done(base_ids, timeout=60 * args.baseline)
    base_rows = bench.times(base_ids)
    bench.stop(naive)
    base_elapsed = max(r[2] or 0 for r in base_rows) - min(r[0] for r in base_rows)
    base_rate = len(base_ids) / base_elapsed
    print(f"baseline: {len(base_ids)} tasks, one job each, in {base_elapsed:.1f}s = {base_rate:.2f} tasks/s",
          flush=True)
    shutil.rmtree(bench.data / "dispatch", ignore_errors=True)

    # batched
    disp = bench.start_dispatcher("batched")
    sampler.dispatcher_pid = disp.pid
    t0 = time.time()
    ids = bench.submit(args.tasks)
    submitted = time.time() - t0
    bench.wait_done(ids, timeout=max(600, args.tasks))
    rows = bench.times(ids)
    failed = sum(1 for r in rows if r[3] != "succeeded")
    elapsed = max(r[2] or 0 for r in rows) - min(r[0] for r in rows)
    rate = len(ids) / elapsed
    started = [r[1] - r[0] for r in rows if r[1]]
    finished = [r[2] - r[0] for r in rows if r[2]]
    print(f"batched: {len(ids)} tasks ({failed} not succeeded) in {elapsed:.1f}s = {rate:.1f} tasks/s "
          f"(submitting took {submitted:.1f}s)", flush=True)

    # idle latency: one task at a time
    idle = []
    for _ in range(args.idle):
        (task_id,) = bench.submit(1)
        bench.wait_done([task_id], timeout=120)
        created, start, _, _ = bench.times([task_id])[0]
        idle.append((start or created) - created)
    sampler.stop.set()
    sampler.join()
    artifacts = du(bench.data / "dispatch")
    jobs = len(list((bench.data / "dispatch" / "jobs").iterdir())) if (bench.data / "dispatch" / "jobs").exists() else 0
    return {
        "tasks": len(ids), "nodes": args.nodes, "concurrency": args.concurrency, "not_succeeded": failed,
        "tasks_per_s": rate, "elapsed_s": elapsed,
        "p50_submit_started_s": pct(started, 0.5), "p95_submit_started_s": pct(started, 0.95),
        "p50_submit_finished_s": pct(finished, 0.5), "p95_submit_finished_s": pct(finished, 0.95),
        "idle_p50_submit_started_s": statistics.median(idle) if idle else float("nan"),
        "baseline_tasks": len(base_ids), "baseline_tasks_per_s": base_rate, "ratio": rate / base_rate,
        "peak_rss_mb": {k: v / 1024 for k, v in sampler.peak.items()},
        "artifacts_bytes": artifacts, "job_dirs_kept": jobs,
    }


def report(r: dict[str, Any]) -> bool:
    rss = r["peak_rss_mb"]
    ok = (r["ratio"] >= TARGET_RATIO and r["idle_p50_submit_started_s"] <= TARGET_IDLE_P50
          and rss["api_process"] < TARGET_RSS_MB and rss["dispatcher"] < TARGET_RSS_MB and not r["not_succeeded"])
    lines = [
        "| measure | value | target |", "| --- | --- | --- |",
        f"| tasks, nodes x concurrency | {r['tasks']}, {r['nodes']} x {r['concurrency']} | 1000, 50 x 20 |",
        f"| throughput, batched | {r['tasks_per_s']:.1f} tasks/s ({r['elapsed_s']:.1f} s) | |",
        f"| throughput, naive (one ansible-playbook per task, {r['baseline_tasks']} tasks) "
        f"| {r['baseline_tasks_per_s']:.2f} tasks/s | |",
        f"| ratio | {r['ratio']:.1f}x | >= {TARGET_RATIO:.0f}x |",
        f"| submit->started p50 / p95 | {r['p50_submit_started_s']:.2f} s / {r['p95_submit_started_s']:.2f} s | |",
        f"| submit->finished p50 / p95 | {r['p50_submit_finished_s']:.2f} s / {r['p95_submit_finished_s']:.2f} s | |",
        f"| submit->started p50, single task on an idle farm | {r['idle_p50_submit_started_s']:.2f} s "
        f"| <= {TARGET_IDLE_P50:.0f} s |",
        f"| peak RSS API (largest process / all) | {rss['api_process']:.0f} MB / {rss['api_total']:.0f} MB "
        f"| < {TARGET_RSS_MB:.0f} MB |",
        f"| peak RSS dispatcher (its ansible job tree apart) | {rss['dispatcher']:.0f} MB "
        f"({rss['ansible_job']:.0f} MB) | < {TARGET_RSS_MB:.0f} MB |",
        f"| dispatcher job dirs at the end | {r['job_dirs_kept']} dirs, {r['artifacts_bytes'] / 1e6:.1f} MB "
        "| bounded (artifacts_keep) |",
        f"| tasks not succeeded | {r['not_succeeded']} | 0 |",
    ]
    print("\n".join(lines))
    print("targets met" if ok else "TARGETS MISSED")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--baseline", type=int, default=20, help="tasks in the naive sample (>= 20)")
    parser.add_argument("--idle", type=int, default=5, help="single tasks for the idle latency")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="zf-bench-dispatch-"))
    bench = Bench(workdir)
    try:
        result = run(args, bench)
    finally:
        bench.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if report(result) else 1


if __name__ == "__main__":
    sys.exit(main())

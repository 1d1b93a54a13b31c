"""Crash safety (issue 3): a kill -9 of the API, or of the whole control host, mid-run.

The API runs as operators run it (``zonefarm api``: gunicorn, its own process group) on a
fixed loopback port, with a real ``zonefarm dispatcher`` process and three nodes mapped
to this machine whose runners call back over HTTP. While tasks are running the API's
process group gets SIGKILL; a few seconds later it is started again on the same port and
database. Every task must then end in exactly one terminal state with exactly one terminal
event, every launched attempt must have run its command exactly once, and no request may
have got a 500. Runs on SQLite and PostgreSQL (``db_url``).

A kill -9 of the dispatcher alone is covered by
``test_dispatch.py::test_dispatcher_killed_mid_round_loses_and_doubles_nothing``; here the
second case is the control host dying as a whole: API and dispatcher at once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control.core.config import Settings
from control.node.signing import derive_node_key
from control.web.app import build_app
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.apiproc import ApiProcess, api_env
from tests.support.client import Api
from tests.support.farm import TERMINAL, Farm
from tests.support.leaks import assert_no_secrets, files_under
from tests.support.pg import free_port
from tests.support.procs import kill_tree

pytestmark = pytest.mark.slow
LEASE = 30  # far longer than the outages here: a runner that keeps retrying must never be declared lost
TASKS = 40
OUTAGE = 7.0  # longer than a started/progress/log report retries: the runner must ride it out
# cwd is the task's own sandbox directory (named <id>-<attempt>-<random>), the only place a sandboxed task may
# write, which the runner moves to <work>/tasks/<id>/<attempt>/work/ when the task ends: one line
# "ran-<id>-<attempt>" in its ran.log per run of the command. It goes to the task's output too, so a task
# ending while the API is down has a log to send.
COMMAND = ["sh", "-c", "echo ran-$ZONEFARM_TASK_ID-$(basename $PWD | cut -d- -f2) | tee -a ran.log; sleep 0.5"]


class ControlPlane:
    """``zonefarm api`` on one fixed port and database, which a test may kill -9 and start again."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = api_env(
            tmp_path, ZONEFARM_DATABASE=db_url, ZONEFARM_ROOT_SECRET=ROOT_SECRET, ZONEFARM_NODES_SECRET=NODES_SECRET,
            ZONEFARM_LISTEN=f"127.0.0.1:{self.port}", ZONEFARM_API_THREADS="8", ZONEFARM_TASK_LEASE=str(LEASE),
            ZONEFARM_NODE_LEASE="120")
        self.procs: list[ApiProcess] = []

    def start(self) -> ApiProcess:
        proc = ApiProcess(["api"], self.env, self.tmp / f"api-{len(self.procs)}.log", self.port)
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def kill(self) -> None:
        """Master and workers die mid-request, nothing is flushed."""
        self.procs[-1].kill()

    def requests(self) -> list[dict[str, Any]]:
        """Access-log lines of every run."""
        return [line for proc in self.procs for line in proc.access_lines()]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def plane(db_url: str, tmp_path: Path) -> Iterator[ControlPlane]:
    build_app(Settings(), init_db=False)  # registers every route, so the client's OpenAPI checker knows them
    cp = ControlPlane(db_url, tmp_path)
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture
def farm(plane: ControlPlane, db_url: str, tmp_path: Path) -> Iterator[Farm]:
    """Nodes, dispatcher processes and task helpers pointed at the API process, with the API's lease."""
    settings = Settings(database=db_url, data_dir=str(tmp_path / "data"))
    f = Farm(Api(plane.url, ROOT_SECRET), plane.url, settings, tmp_path, lease=LEASE, nodes_secret=NODES_SECRET)
    for i in range(1, 4):
        f.add_node(f"wk{i}", concurrency=4)
    yield f
    f.stop()


def _states(farm: Farm) -> dict[int, str]:
    items = farm.api.get("/tasks", token=farm.api.root, params={"limit": 500}).json()["items"]
    return {item["id"]: item["state"] for item in items}


def _counts(farm: Farm) -> dict[str, int]:
    out: dict[str, int] = {}
    for state in _states(farm).values():
        out[state] = out.get(state, 0) + 1
    return out


def _mid_run(states: dict[int, str]) -> bool:
    """Tasks running and others still waiting."""
    values = list(states.values())
    return values.count("running") >= 2 and values.count("queued") + values.count("assigned") >= 5


def _mid_round(states: dict[int, str]) -> bool:
    """A later round in flight: earlier tasks done, a batch claimed whose launch has not reported yet."""
    values = list(states.values())
    return values.count("succeeded") >= 1 and values.count("assigned") >= 4 and values.count("queued") >= 1


def _kill_when(farm: Farm, moment: Callable[[dict[int, str]], bool], kill: Callable[[], None]) -> list[int]:
    """Kills at that moment; returns the ids of the tasks running just before."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = _states(farm)
        if moment(states):
            kill()
            return [i for i, s in states.items() if s == "running"]
        time.sleep(0.05)
    raise AssertionError(f"that moment never came: {_counts(farm)}\n{farm.dispatcher_logs()[-3000:]}")


def _wait_all_terminal(farm: Farm, ids: list[int], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = _counts(farm)
        if sum(counts.get(s, 0) for s in TERMINAL) == len(ids):
            return
        farm.assert_dispatchers_alive()
        time.sleep(0.3)
    raise AssertionError(f"not all tasks ended within {timeout}s: {_counts(farm)}\n{farm.dispatcher_logs()[-3000:]}")


def _runs(farm: Farm) -> tuple[Counter[str], dict[int, int]]:
    """Runs of the command per "<id>-<attempt>", and attempts launched per task, over every node."""
    ran: Counter[str] = Counter()
    launched: Counter[int] = Counter()
    for work in farm.nodes.values():
        for log in work.glob("tasks/*/*/work/ran.log"):
            for line in log.read_text().splitlines():
                assert line == f"ran-{log.parent.parent.parent.name}-{log.parent.parent.name}", line
                ran[line.removeprefix("ran-")] += 1
        for spec in work.glob("tasks/*/*/spec.json"):
            launched[int(spec.parent.parent.name)] += 1
    return ran, launched


def _assert_exactly_once(farm: Farm, plane: ControlPlane, ids: list[int]) -> dict[int, list[str]]:
    """One completion per task, no attempt run twice, no 500 anywhere; returns each task's states."""
    ran, launched = _runs(farm)
    assert [run for run, count in ran.items() if count > 1] == []  # no attempt's work done twice
    history = {}
    for task_id in ids:
        task = farm.task(task_id)
        states = [e["to_state"] for e in farm.events(task_id)]
        history[task_id] = states
        assert task["state"] == "succeeded", (task_id, states)
        assert sum(s in TERMINAL for s in states) == 1 and states[-1] == "succeeded", (task_id, states)
        # a retried attempt after `lost` is legitimate; the completion is the last attempt's own run
        assert ran[f"{task_id}-{task['attempt']}"] == 1, (task_id, task["attempt"], states)
        assert launched[task_id] <= task["attempt"] == states.count("assigned"), (task_id, states)
        # its output made it through the outage, once: a second run of the attempt would print it again
        assert farm.log(task_id).count(f"ran-{task_id}-{task['attempt']}\n") == 1, (task_id, farm.log(task_id))
    lines = plane.requests()
    callbacks = [line for line in lines if str(line.get("path", "")).endswith("/callback")]
    assert callbacks, "no callback reached the API"
    assert [line for line in lines if int(line.get("status", 0)) >= 500] == []
    for work in farm.nodes.values():  # what the runners saw, including answers the access log may have lost
        for cb_log in work.glob("tasks/*/*/callbacks.log"):
            assert "HTTP 5" not in cb_log.read_text(), cb_log
        errors = [p.read_text() for p in work.glob("tasks/*/*/runner.error")]
        assert errors == [], errors
    _assert_no_secrets_logged(farm, plane)
    return history


def _assert_no_secrets_logged(farm: Farm, plane: ControlPlane) -> None:
    """Thousands of signed requests crossed the API, through a kill: none of the credentials
    behind them is in the API's logs, the dispatchers' logs and job directories, or anything the
    runners wrote in the nodes' work trees (the nodes' own INI files are where keys belong)."""
    secrets = {"root secret": ROOT_SECRET, "nodes secret": NODES_SECRET}
    secrets.update({f"{name}'s node key": derive_node_key(NODES_SECRET, name) for name in farm.nodes})
    paths = files_under(*plane.tmp.glob("api-*.log"), *plane.tmp.glob("dispatcher-*.log"),
                        Path(farm.settings.data_dir), *farm.nodes.values())
    node_files = [p for p in paths if any(work in p.parents for work in farm.nodes.values())]
    assert any(p.name.startswith("api-") for p in paths) and node_files, paths
    assert_no_secrets(paths, secrets)


def test_api_killed_mid_run_loses_and_doubles_nothing(farm: Farm, plane: ControlPlane) -> None:
    ids = [farm.submit("shell", {"argv": COMMAND})["id"] for _ in range(TASKS)]
    farm.start_dispatcher("d1")
    running = _kill_when(farm, _mid_run, plane.kill)
    killed_at = time.monotonic()
    time.sleep(OUTAGE)  # the dispatcher and the runners carry on against a dead API
    plane.start()
    outage = time.monotonic() - killed_at
    _wait_all_terminal(farm, ids)
    history = _assert_exactly_once(farm, plane, ids)
    assert len(plane.procs) == 2 and plane.procs[0].proc.returncode == -signal.SIGKILL
    if outage < LEASE - 10:  # runners waited the outage out: nothing was lost, so nothing ran twice
        lost = {i: s for i, s in history.items() if "lost" in s}
        assert lost == {}, f"outage {outage:.1f}s under a {LEASE}s lease, yet lost: {lost}"
        assert all(farm.task(i)["attempt"] == 1 for i in ids)
    for task_id in running:  # what ran through the kill ended from its own runner's report
        assert history[task_id][-3:] == ["assigned", "running", "succeeded"], history[task_id]


def test_control_host_killed_mid_run_api_and_dispatcher_carry_on(farm: Farm, plane: ControlPlane) -> None:
    ids = [farm.submit("shell", {"argv": COMMAND})["id"] for _ in range(TASKS)]
    first = farm.start_dispatcher("d1")

    def kill_both() -> None:
        # the dispatcher with its ansible job mid-round (the runners it launched live on the nodes: spared)
        kill_tree(first.pid, spare=lambda cmd: "control.node.runner" in cmd)
        plane.kill()

    running = _kill_when(farm, _mid_round, kill_both)
    first.wait(10)
    farm.dispatchers.remove(first)
    time.sleep(OUTAGE)
    plane.start()
    farm.start_dispatcher("d2")  # a new dispatcher only knows what the database says
    _wait_all_terminal(farm, ids, timeout=150)
    history = _assert_exactly_once(farm, plane, ids)
    for task_id in running:  # their runners outlived the host: no rerun, their own report ended them
        assert "lost" not in history[task_id], history[task_id]
    # claims d1 held but never launched come back through their lease, and d2 runs them
    for task_id, states in history.items():
        if "lost" in states:
            assert states[states.index("lost") + 1] == "queued", (task_id, states)

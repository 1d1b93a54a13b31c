"""A task farm on this machine for end-to-end tests: nodes, ``zonefarm dispatcher`` processes, task helpers.

Several node names map to this machine (``ansible_connection=local``), each with its own
work dir and 0600 INI file holding its own key (derived from the nodes secret, as the
worker role does); they register themselves with signed requests (``control.node.agent``).
The API may be the in-process live server or a ``zonefarm api`` process: the farm only
needs its URL and a client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from control.core.config import Settings
from control.node.agent import register
from control.node.config import load_node_config, write_node_config
from control.node.signing import derive_node_key
from tests.support.apiproc import clean_env
from tests.support.client import Api

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")


class Farm:
    """Nodes on this machine, dispatcher processes, and helpers to follow tasks.

    ``lease`` is the task lease the dispatchers run with; it must match the API's, or a
    dispatcher renews claims for a different term than the API gives runners.
    """

    def __init__(self, api: Api, api_url: str, settings: Settings, tmp_path: Path, *, lease: int,
                 nodes_secret: str) -> None:
        self.api = api
        self.api_url = api_url
        self.settings = settings
        self.tmp = tmp_path
        self.lease = lease
        self.nodes_secret = nodes_secret
        self.nodes: dict[str, Path] = {}
        self.dispatchers: list[subprocess.Popen[bytes]] = []

    def add_node(self, name: str, region: str = "default", concurrency: int = 4, **extra: Any) -> Path:
        base = self.tmp / "nodes" / name
        values: dict[str, Any] = {"ansible_connection": "local", "ansible_host": "127.0.0.1",
                                  "ansible_user": "root", "python": sys.executable, **extra}
        config = write_node_config(
            base / "node.ini", name=name, api_url=self.api_url, region=region,
            node_key=derive_node_key(self.nodes_secret, name), key_generation=0,
            concurrency=concurrency, workdir=str(base / "work"), **values)
        register(load_node_config(config))
        self.nodes[name] = base / "work"
        return base / "work"

    def start_dispatcher(self, ident: str, *args: str, **env_extra: str) -> subprocess.Popen[bytes]:
        """A ``zonefarm dispatcher`` process with more command-line ``args`` (``--claim-limit 3``);
        ``env_extra`` adds settings (``ZONEFARM_*``) or Ansible's."""
        env = clean_env()
        env.update(ZONEFARM_DATABASE=self.settings.database, ZONEFARM_DATA_DIR=self.settings.data_dir,
                   ZONEFARM_TASK_LEASE=str(self.lease), ZONEFARM_NODE_LEASE="120",
                   ZONEFARM_DISPATCH_INTERVAL="0.2", ZONEFARM_ARTIFACTS_KEEP="3", ZONEFARM_LOG_LEVEL="INFO",
                   **env_extra)
        with open(self.tmp / f"dispatcher-{ident}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "control.cli", "dispatcher", "--ident", ident, *args],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.dispatchers.append(proc)
        return proc

    def submit(self, name: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        resp = self.api.post("/tasks", token=self.api.root, json={"name": name, "params": params, **extra})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def task(self, task_id: int) -> dict[str, Any]:
        resp = self.api.get(f"/tasks/{task_id}", token=self.api.root)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def assert_dispatchers_alive(self) -> None:
        for proc in self.dispatchers:
            assert proc.poll() is None, f"dispatcher exited {proc.returncode}: {self.dispatcher_logs()[-3000:]}"

    def wait(self, task_id: int, states: tuple[str, ...] = TERMINAL, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task["state"] in states:
                return task
            self.assert_dispatchers_alive()
            time.sleep(0.2)
        raise AssertionError(f"task {task_id} still {self.task(task_id)['state']}; events "
                             f"{self.events(task_id)}\n{self.dispatcher_logs()[-3000:]}")

    def events(self, task_id: int) -> list[dict[str, Any]]:
        return self.api.get(f"/tasks/{task_id}/events", token=self.api.root).json()

    def log(self, task_id: int) -> str:
        return self.api.get(f"/tasks/{task_id}/log", token=self.api.root).json()["text"]

    def dispatcher_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("dispatcher-*.log")))

    def stop(self) -> None:
        for proc in self.dispatchers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.dispatchers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for work in self.nodes.values():  # runners and task processes the tests left behind
            for pid_file in list(work.glob("tasks/*/*/child.pid")) + list(work.glob("tasks/*/*/runner.pid")):
                pid = int(pid_file.read_text() or 0)
                if pid <= 0:  # half-written: killpg(0) would hit the test run itself
                    continue
                try:
                    if pid_file.name == "child.pid":
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

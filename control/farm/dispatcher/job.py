"""Running one ansible-runner job: preparing its directory, running it, keeping what it said.

As ansible-runner keeps preparing, running and interface apart, so does this module
keep apart from the round: each job gets its own ``private_data_dir`` (inventory and
generated playbook in it, 0700), an environment built here rather than inherited
(``ZONEFARM_*`` scrubbed; ansible-runner writes no env files), an event handler that
keeps only what the round needs and always returns True (ansible-runner then keeps the
event artifacts; the handler is on the job's hot path, so it only appends), its own
cancel callback, and a lease keeper that renews the round's claims while it runs.
Finished job directories are rotated: the newest ``artifacts_keep`` stay.

SSH host keys are always checked (``StrictHostKeyChecking=yes``), against the
``dispatch_known_hosts`` file the cluster_manager role writes from keys read on the
workers themselves; what ssh said about a host it could not reach is kept, so the round
can tell a refused host key from a host that is down.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from control.core.db import connection, write_transaction
from control.core.paths import share_dir
from control.farm import states
from control.farm.dispatcher.inventory import render

log = logging.getLogger("zonefarm.dispatch")

ROOT = share_dir()
JOB_TIMEOUT = 600


HOST_KEY_FAILED = "Host key verification failed"  # what ssh prints whenever it refuses a host key


def ansible_env(known_hosts: str = "") -> dict[str, str]:
    """Settings the job needs; ansible.cfg is not read because the job's cwd is its own.

    Host key checking is on and strict: ssh never adds a key it has not seen.
    """
    ssh_args = "-o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=yes"
    if known_hosts:
        ssh_args += f" -o UserKnownHostsFile={shlex.quote(known_hosts)}"
    bindir = os.path.dirname(sys.executable)  # ansible-playbook sits beside our interpreter
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {
        "PATH": path if bindir in path.split(os.pathsep) else f"{bindir}{os.pathsep}{path}",
        "ANSIBLE_LIBRARY": str(ROOT / "library"),
        "ANSIBLE_MODULE_UTILS": str(ROOT / "module_utils"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": ssh_args,
        "ANSIBLE_INTERPRETER_PYTHON": "auto_silent",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",  # the job's inventory is YAML (every string !unsafe)
        "ANSIBLE_DEVEL_WARNING": "False",
    }


def scrub_environ() -> None:
    """Drop ZONEFARM_* (secrets, database password) before any job inherits os.environ.

    ansible-runner records the job's environment in its ``command`` artifact.
    """
    keep = ("ZONEFARM_TASKS_DIR", "ZONEFARM_SHARE_DIR")
    for key in [k for k in os.environ if k.startswith("ZONEFARM_") and k not in keep]:
        del os.environ[key]


def host_key_refusal(node: str, hv: dict[str, Any], message: str, known_hosts: str) -> str | None:
    """Why ``node`` is refused when ssh would not trust its host key (``message``), else None."""
    if HOST_KEY_FAILED not in message:
        return None
    where = f"{hv.get('ansible_host', node)}:{hv.get('ansible_port', 22)}"
    listed = f"the dispatcher's known_hosts ({known_hosts or '~/.ssh/known_hosts'})"
    what = (f"has changed: it does not match {listed}" if "IDENTIFICATION HAS CHANGED" in message
            else f"is not in {listed}")
    return (f"SSH host key of node {node} ({where}) {what}; the dispatcher cordoned the node: check the host, "
            f"then refresh its key (site.yml --limit {node}) and uncordon it")


class EventSink:
    """The job's event handler: keep only what the round needs from module results."""

    def __init__(self) -> None:
        self.absent: list[tuple[str, int]] = []
        self.launched: dict[str, list[int]] = defaultdict(list)
        # entries the launch module refused (bad params): (host, task id) -> why; only those tasks fail
        self.rejected: dict[tuple[str, int], str] = {}
        self.failed_hosts: set[str] = set()
        self.unreachable: dict[str, str] = {}  # host -> what the connection said

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event")
        if kind in ("runner_on_failed", "runner_on_unreachable"):
            data = event.get("event_data") or {}
            if not (kind == "runner_on_failed" and data.get("ignore_errors")):
                self.failed_hosts.add(data.get("host", ""))
            if kind == "runner_on_unreachable":
                self.unreachable[data.get("host", "")] = str((data.get("res") or {}).get("msg", ""))
        elif kind == "runner_on_ok":
            data = event.get("event_data") or {}
            res = data.get("res") or {}
            action = data.get("task_action", "")
            if action.endswith("zonefarm_kill"):
                self.absent.extend((data.get("host", ""), int(i)) for i in res.get("absent") or [])
            elif action.endswith("zonefarm_launch"):
                done = (res.get("launched") or []) + (res.get("skipped") or [])  # skipped: launched before
                self.launched[data.get("host", "")].extend(int(i) for i in done)
                for entry in res.get("rejected") or []:
                    try:
                        self.rejected[(data.get("host", ""), int(entry["id"]))] = str(entry.get("reason", ""))
                    except (KeyError, TypeError, ValueError):
                        continue
        return True


class LeaseKeeper(threading.Thread):
    """Renews this dispatcher's claims while its job runs.

    A claim carries a lease so a dispatcher that dies before launching gives its tasks
    back; a live one whose job is slow (50 hosts on a busy machine) must not lose them.
    Once a runner reports ``started`` its callbacks renew the lease instead.
    """

    def __init__(self, ident: str, task_ids: list[int], lease: float) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.owner, self.task_ids, self.lease = ident, task_ids, lease
        self.done = threading.Event()

    def renew(self) -> int:
        with connection(), write_transaction():
            return states.extend_claims(self.owner, self.task_ids, self.lease)

    def run(self) -> None:
        while not self.done.wait(max(self.lease / 3.0, 0.5)):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease
                log.warning("could not renew claim leases", exc_info=True)


@dataclass
class JobResult:
    """What a job said: ansible-runner's status and rc, whether it reached a host, and the events kept."""

    job_dir: str
    status: str
    rc: int | None
    reached: bool  # some host answered (ok, failed or unreachable): the job itself ran
    sink: EventSink = field(default_factory=EventSink)


def new_job_dir(jobs_dir: Path, ident: str, seq: int) -> Path:
    """A fresh private_data_dir (0700) named so a listing sorts by time."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    safe = "".join(c if c.isalnum() else "-" for c in ident)
    path = jobs_dir / f"{stamp}-{safe}-{seq:06d}"
    (path / "inventory").mkdir(parents=True, mode=0o700)
    (path / "project").mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


def rotate(jobs_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` finished job directories.

    Dispatchers may share a data dir, so a job still running (no ``status`` artifact
    yet) is left alone unless it is older than any job may run (its dispatcher died).
    """
    if not jobs_dir.is_dir():
        return
    stale = time.time() - 2 * JOB_TIMEOUT
    finished = []
    for job in jobs_dir.iterdir():
        try:
            if (job / "artifacts" / "job" / "status").exists() or job.stat().st_mtime < stale:
                finished.append(job)
        except OSError:
            continue
    finished.sort(key=lambda p: p.name)
    for old in finished[: max(len(finished) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def run(job_dir: Path, inventory: dict[str, Any], plays: list[Path], *, forks: int,
        cancelled: Callable[[], bool], keeper: LeaseKeeper | None = None, known_hosts: str = "") -> JobResult:
    """Run the plays over the inventory in ``job_dir``; ``keeper`` renews claims while it runs.

    ``known_hosts`` is the file the workers' SSH host keys are checked against.

    ``cancelled`` is ansible-runner's cancel callback: when it turns true the job is
    abandoned (its claims then go back to the queue when their leases run out).
    """
    (job_dir / "inventory" / "hosts.yml").write_text(render(inventory))
    playbook = [{"ansible.builtin.import_playbook": str(p)} for p in plays]
    (job_dir / "project" / "round.yml").write_text(json.dumps(playbook))
    sink = EventSink()
    if keeper is not None:
        keeper.start()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(job_dir), playbook="round.yml",
            inventory=str(job_dir / "inventory" / "hosts.yml"),
            forks=max(1, min(forks, len(inventory["all"]["hosts"]))), envvars=ansible_env(known_hosts),
            suppress_env_files=True, quiet=True, event_handler=sink, cancel_callback=cancelled,
            timeout=JOB_TIMEOUT, ident="job")
    finally:
        if keeper is not None:
            keeper.done.set()
            keeper.join()
    stats = runner.stats or {}
    for key in ("failures", "dark"):
        sink.failed_hosts.update((stats.get(key) or {}).keys())
    return JobResult(job_dir=str(job_dir), status=runner.status, rc=runner.rc, sink=sink,
                     reached=any(stats.get(k) for k in ("ok", "failures", "dark", "changed", "skipped")))

"""The dispatcher (cluster manager): each round reap, claim, and run ONE ansible-runner job.

A round's job covers every node that has something to do: the tasks claimed for it
(hostvar ``zonefarm_batch``) and the kills the reaper handed out (``zonefarm_kills``).
The job only *starts* tasks, detached, through ``zonefarm_launch`` and returns; the
worker's runner reports from then on with signed callbacks. An Ansible round costs about
a second whatever it carries, so batching is what makes the farm fast.

Nothing is kept in memory between rounds: a restarted dispatcher carries on from the
database (claims with a lease, ``kill_sent_at``), so a kill -9 loses nothing.

Secrets stay out of the job: no nodes secret is passed (the runner reads it from the
node's 0600 INI), ``ZONEFARM_*`` variables are removed from the environment Ansible
inherits, and ansible-runner writes no env files.

SSH host keys are always checked, against ``dispatch_known_hosts`` (the cluster_manager
role writes it from keys read on the workers themselves). A node whose key does not match
is cordoned with the reason on it and on its tasks, which go back to the queue: a changed
key means a reinstalled host or someone in between, and either needs an operator.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.core.config import Settings, load_settings
from control.core.paths import share_dir

log = logging.getLogger("zonefarm.dispatch")

ROOT = share_dir()
KILL_PLAYBOOK = ROOT / "playbooks" / "farm" / "kill.yml"
CLAIM_LIMIT = 5000
JOB_TIMEOUT = 600


@dataclass
class Round:
    """What one dispatch round did, for logs, tests and the benchmark."""

    job_dir: str | None = None
    launched: dict[str, list[int]] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    failed_hosts: list[str] = field(default_factory=list)
    status: str = "idle"
    rc: int | None = None
    reached: bool = False  # some host answered (ok, failed or unreachable): the job itself ran
    seconds: float = 0.0


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
        "ANSIBLE_INVENTORY_ENABLED": "yaml",  # the job's inventory is JSON; skip probing other plugins
        "ANSIBLE_DEVEL_WARNING": "False",
    }


def scrub_environ() -> None:
    """Drop ZONEFARM_* (secrets, database password) before any job inherits os.environ.

    ansible-runner records the job's environment in its ``command`` artifact.
    """
    keep = ("ZONEFARM_TASKS_DIR", "ZONEFARM_SHARE_DIR")
    for key in [k for k in os.environ if k.startswith("ZONEFARM_") and k not in keep]:
        del os.environ[key]


def _upload(task: Any, cache: dict[int, dict[str, Any] | None]) -> dict[str, Any] | None:
    space_id = getattr(task, "space_id", None)
    if not space_id:
        return None
    if space_id not in cache:
        from control.registry.membership import upload_targets
        chosen = None
        for target in upload_targets(space_id):
            if target.get("sftp_host") and target.get("path"):
                chosen = {"sftp_host": target["sftp_host"], "sftp_port": target.get("sftp_port") or 22,
                          "sftp_user": target.get("sftp_user") or "", "storage_path": target["path"],
                          "space_id": space_id, "provider": target.get("name")}
                break
        cache[space_id] = chosen
    return cache[space_id]


def host_vars(node: Any) -> dict[str, Any]:
    hv: dict[str, Any] = {
        "ansible_host": node.ansible_host or "127.0.0.1",
        "ansible_connection": node.ansible_connection or "ssh",
        "zonefarm_workdir": node.workdir,
        "zonefarm_config_path": node.config_path,
        "zonefarm_batch": [],
        "zonefarm_kills": [],
    }
    if node.ansible_port:
        hv["ansible_port"] = node.ansible_port
    if node.ansible_user:
        hv["ansible_user"] = node.ansible_user
    if node.python:
        hv["ansible_python_interpreter"] = node.python
    return hv


def build_inventory(tasks: list[Any], kills: list[Any], lease: int) -> tuple[dict[str, Any], list[Path]]:
    """The job's inventory (registry nodes as hosts, one group per task type) and its plays."""
    hosts: dict[str, dict[str, Any]] = {}
    groups: dict[str, set[str]] = defaultdict(set)
    uploads: dict[int, dict[str, Any] | None] = {}
    for task in tasks:
        node = task.node
        hv = hosts.setdefault(node.name, host_vars(node))
        hv["zonefarm_task_lease"] = lease
        hv["zonefarm_batch"].append({
            "id": task.id, "attempt": task.attempt, "name": task.name, "params": task.params or {},
            "timeout": task.timeout, "upload": _upload(task, uploads)})
        groups[f"zonefarm_type_{task.name}"].add(node.name)
    for task in kills:
        node = task.node
        hv = hosts.setdefault(node.name, host_vars(node))
        hv["zonefarm_kills"].append({"id": task.id, "attempt": task.attempt, "reason": task.kill_reason})
        groups["zonefarm_kill"].add(node.name)
    inventory = {"all": {"hosts": hosts,
                         "children": {g: {"hosts": {h: {} for h in sorted(members)}}
                                      for g, members in sorted(groups.items())}}}
    from control.farm.catalogue import playbook

    plays = [KILL_PLAYBOOK] if kills else []
    plays += [playbook(name) for name in sorted({t.name for t in tasks})]  # the task-type catalogue
    return inventory, plays


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
        from control.core.db import connection, write_transaction
        from control.core.models import now
        from control.farm.models import Task

        with connection(), write_transaction():
            return (Task.update(lease_expires_at=now() + self.lease)
                    .where(Task.id.in_(self.task_ids), Task.state == "assigned", Task.claimed_by == self.owner)
                    .execute())

    def run(self) -> None:
        while not self.done.wait(max(self.lease / 3.0, 0.5)):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease
                log.warning("could not renew claim leases", exc_info=True)


class Dispatcher:
    def __init__(self, settings: Settings, ident: str | None = None, claim_limit: int = CLAIM_LIMIT) -> None:
        self.settings = settings
        self.claim_limit = claim_limit
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobs_dir = Path(settings.data_dir) / "dispatch" / "jobs"
        self.stop = threading.Event()
        self.seq = 0

    def cancelled(self) -> bool:
        """ansible-runner's cancel_callback: a stopping dispatcher abandons its job.

        Its claims are then requeued by the reaper when their lease runs out.
        """
        return self.stop.is_set()

    def _new_job_dir(self) -> Path:
        self.seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        safe = "".join(c if c.isalnum() else "-" for c in self.ident)
        path = self.jobs_dir / f"{stamp}-{safe}-{self.seq:06d}"
        (path / "inventory").mkdir(parents=True, mode=0o700)
        (path / "project").mkdir(mode=0o700)
        os.chmod(path, 0o700)
        return path

    def rotate(self) -> None:
        """Keep the newest ``artifacts_keep`` finished job directories in the data dir.

        Dispatchers may share a data dir, so a job still running (no ``status`` artifact
        yet) is left alone unless it is older than any job may run (its dispatcher died).
        """
        if not self.jobs_dir.is_dir():
            return
        stale = time.time() - 2 * JOB_TIMEOUT
        finished = []
        for job in self.jobs_dir.iterdir():
            try:
                if (job / "artifacts" / "job" / "status").exists() or job.stat().st_mtime < stale:
                    finished.append(job)
            except OSError:
                continue
        finished.sort(key=lambda p: p.name)
        for old in finished[: max(len(finished) - self.settings.artifacts_keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def run_job(self, inventory: dict[str, Any], plays: list[Path]) -> tuple[Round, EventSink]:
        import ansible_runner

        job = self._new_job_dir()
        (job / "inventory" / "hosts.json").write_text(json.dumps(inventory))
        playbook = [{"ansible.builtin.import_playbook": str(p)} for p in plays]
        (job / "project" / "round.yml").write_text(json.dumps(playbook))
        sink = EventSink()
        result = Round(job_dir=str(job))
        forks = max(1, min(self.settings.dispatch_forks, len(inventory["all"]["hosts"])))
        runner = ansible_runner.run(
            private_data_dir=str(job), playbook="round.yml", inventory=str(job / "inventory" / "hosts.json"),
            forks=forks, envvars=ansible_env(self.settings.dispatch_known_hosts), suppress_env_files=True, quiet=True,
            event_handler=sink, cancel_callback=self.cancelled, timeout=JOB_TIMEOUT,
            ident="job")
        result.status, result.rc = runner.status, runner.rc
        stats = runner.stats or {}
        result.reached = any(stats.get(k) for k in ("ok", "failures", "dark", "changed", "skipped"))
        for key in ("failures", "dark"):
            sink.failed_hosts.update((stats.get(key) or {}).keys())
        return result, sink

    def run_round(self) -> Round:
        from control.core.db import connection
        from control.farm import claims, reaper, states

        started = time.monotonic()
        kills = reaper.reap(self.settings)
        tasks = claims.claim(self.ident, self.claim_limit, lease=self.settings.task_lease,
                             placement=self.settings.dispatch_placement)
        if tasks:
            tasks = self._known_types(tasks)
        if not tasks and not kills:
            return Round()
        with connection():
            inventory, plays = build_inventory(tasks, kills, self.settings.task_lease)
        keeper = LeaseKeeper(self.ident, [t.id for t in tasks], self.settings.task_lease)
        keeper.start()
        try:
            result, sink = self.run_job(inventory, plays)
        except Exception as exc:
            log.exception("dispatch job could not run")
            result, sink = Round(status="error"), EventSink()
            sink.failed_hosts.update(inventory["all"]["hosts"])
            reason = f"dispatch job could not run: {type(exc).__name__}"
        else:
            reason = f"dispatch job {result.status} (rc {result.rc})"
        finally:
            keeper.done.set()
            keeper.join()
        with connection():
            refused = self._refuse_host_keys(inventory, sink)
            for task in tasks:
                host = task.node.name
                # The launch module's own answer says what started; everything else goes back.
                if task.id not in sink.launched.get(host, []):
                    why = f"launch failed on node {host}: {refused.get(host) or reason}"
                    if states.release(task.id, why):
                        result.released.append(task.id)
            absent = {(h, i) for h, i in sink.absent}
            for task in kills:
                if (task.node.name, task.id) in absent:
                    # no runner left to report it: the dispatcher records the end itself
                    if states.transition(task.id, task.kill_reason, f"killed on node {task.node.name}: "
                                         "no runner was running it", expect=("assigned", "running")):
                        result.ended.append(task.id)
                elif task.node.name not in sink.failed_hosts:
                    result.killed.append(task.id)
        result.launched = {h: ids for h, ids in sink.launched.items()}
        result.failed_hosts = sorted(sink.failed_hosts)
        result.seconds = time.monotonic() - started
        log.info("round: %d launched on %d nodes, %d released, %d killed, %d ended, job %s in %.2fs",
                 sum(len(v) for v in result.launched.values()), len(result.launched), len(result.released),
                 len(result.killed), len(result.ended), result.status, result.seconds)
        self.rotate()
        return result

    def _refuse_host_keys(self, inventory: dict[str, Any], sink: EventSink) -> dict[str, str]:
        """Cordon the nodes whose SSH host key ssh refused, saying why; clear the reason of those reached.

        Without the cordon the node, still heartbeating, would take the same tasks every round
        until their attempts ran out.
        """
        from control.core.db import write_transaction
        from control.farm.models import Node

        hosts = inventory["all"]["hosts"]
        refused = {}
        for host, message in sink.unreachable.items():
            why = host_key_refusal(host, hosts.get(host, {}), message, self.settings.dispatch_known_hosts)
            if why:
                refused[host] = why
        reached = [h for h in hosts if h not in sink.failed_hosts]
        # A read first: most rounds have nothing to clear and should not queue for the write lock.
        stale = [n.name for n in Node.select(Node.name).where(Node.name.in_(reached), Node.dispatch_error != "")
                 ] if reached else []
        if refused or stale:
            with write_transaction():
                for host, why in refused.items():
                    log.error("%s", why)
                    Node.update(cordoned=True, dispatch_error=why).where(Node.name == host).execute()
                if stale:
                    Node.update(dispatch_error="").where(Node.name.in_(stale)).execute()
        return refused

    def _known_types(self, tasks: list[Any]) -> list[Any]:
        """Fail tasks whose type's playbook has gone since they were submitted."""
        from control.core.db import connection
        from control.farm import states
        from control.farm.catalogue import UnknownTaskType, playbook

        known = []
        with connection():
            for task in tasks:
                try:
                    playbook(task.name)
                except UnknownTaskType:
                    states.transition(task.id, "failed", f"task type {task.name!r} has no playbook on the "
                                      "dispatcher", expect=("assigned",))
                    continue
                known.append(task)
        return known

    def serve(self, max_rounds: int | None = None) -> None:
        rounds = 0
        backoff = 0.0
        while not self.stop.is_set():
            try:
                done = self.run_round()
            except Exception:
                log.exception("dispatch round failed; retrying")
                done = Round(status="error")
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                return
            # A job that reached no host is our problem, not the nodes': slow down rather
            # than burn every task's attempts in a tight loop.
            broken = done.status in ("error", "failed", "timeout") and not done.reached
            backoff = min(max(backoff * 2, 1.0), 30.0) if broken else 0.0
            if backoff:
                log.warning("dispatch job reached no host; next round in %.0fs", backoff)
                self.stop.wait(backoff)
            elif done.status == "idle":
                self.stop.wait(self.settings.dispatch_interval)


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from control.core.db import init_database

    settings = load_settings(getattr(args, "config", None))
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scrub_environ()
    init_database(settings.database_url, settings.db_pool_size)
    dispatcher = Dispatcher(settings, ident=args.ident, claim_limit=args.claim_limit)

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after this round", signum)
        dispatcher.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("dispatcher %s: jobs in %s", dispatcher.ident, dispatcher.jobs_dir)
    dispatcher.serve(max_rounds=args.rounds)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dispatcher", help="run the cluster manager: claim tasks, run ansible-runner jobs")
    p.add_argument("--ident", help="dispatcher id recorded on claims (default host:pid:random)")
    p.add_argument("--rounds", type=int, help="stop after this many rounds (testing)")
    p.add_argument("--claim-limit", type=int, default=CLAIM_LIMIT,
                   help="most tasks claimed per round (1 gives one job per task: the benchmark's baseline)")
    p.set_defaults(func=cmd_dispatcher)

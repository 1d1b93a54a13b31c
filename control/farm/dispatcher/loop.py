"""The dispatcher (cluster manager): each round reap, claim, build, run ONE job, apply results.

A round's job covers every node that has something to do (``inventory``: the tasks
claimed for it and the kills the reaper handed out). The job only *starts* tasks,
detached, through ``zonefarm_launch`` and returns; the worker's runner reports from then
on with signed callbacks. An Ansible round costs about a second whatever it carries, so
batching is what makes the farm fast. Running the job is ``job``'s business.

Nothing is kept in memory between rounds: a restarted dispatcher carries on from the
database (claims with a lease, ``kill_sent_at``), so a kill -9 loses nothing.

A node whose SSH host key ssh refused is cordoned with the reason on it and on its tasks,
which go back to the queue: a changed key means a reinstalled host or someone in between,
and either needs an operator. Without the cordon the node, still heartbeating, would take
the same tasks every round until their attempts ran out.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.core import actor as actors
from control.core.config import Settings
from control.core.db import connection, init_database
from control.farm import claims, nodes, reaper, regions, retention, schedules, states, telemetry, transfers, uploads
from control.farm.catalogue import UnknownTaskType, playbook
from control.farm.dispatcher import CLAIM_LIMIT
from control.farm.dispatcher import job as jobs
from control.farm.dispatcher.inventory import build_inventory
from control.farm.models import Task

log = logging.getLogger("zonefarm.dispatch")
HEALTH_EVERY = 5.0  # seconds between health writes while idle


@dataclass
class Round:
    """What one dispatch round did, for logs, tests and the benchmark."""

    job_dir: str | None = None
    launched: dict[str, list[int]] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    failed_hosts: list[str] = field(default_factory=list)
    status: str = "idle"
    rc: int | None = None
    reached: bool = False  # some host answered (ok, failed or unreachable): the job itself ran
    seconds: float = 0.0
    hosts: int = 0  # hosts in the round's inventory


class Dispatcher:
    def __init__(self, settings: Settings, ident: str | None = None, claim_limit: int = CLAIM_LIMIT) -> None:
        self.settings = settings
        self.claim_limit = claim_limit
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobs_dir = Path(settings.data_dir) / "dispatch" / "jobs"
        self.stop = threading.Event()
        self.seq = 0
        self.stats = telemetry.RoundStats()
        self.flushed_at = 0.0
        self.regions = settings.dispatch_region_names

    def cancelled(self) -> bool:
        """The job's cancel callback: a stopping dispatcher abandons its job.

        Its claims are then requeued by the reaper when their lease runs out.
        """
        return self.stop.is_set()

    def rotate(self) -> None:
        """Keep the newest ``artifacts_keep`` finished job directories in the data dir."""
        jobs.rotate(self.jobs_dir, self.settings.artifacts_keep)

    def run_job(self, inventory: dict[str, Any], plays: list[Path], claimed: list[int]) -> jobs.JobResult:
        """Run the round's one job, the leases of the ``claimed`` task ids renewed meanwhile."""
        self.seq += 1
        keeper = jobs.LeaseKeeper(self.ident, claimed, self.settings.task_lease) if claimed else None
        return jobs.run(jobs.new_job_dir(self.jobs_dir, self.ident, self.seq), inventory, plays,
                        forks=self.settings.dispatch_forks, cancelled=self.cancelled, keeper=keeper,
                        known_hosts=self.settings.dispatch_known_hosts)

    def run_round(self) -> Round:
        with actors.acting(self.actor):
            return self._run_round()

    def scope(self) -> regions.Scope:
        """Which nodes this round serves: the dispatcher's regions and those no other live
        dispatcher holds (``control.farm.regions``)."""
        with connection():
            return regions.scope(self.ident, self.regions, time.time(), self.settings.dispatch_region_lease)

    def announce(self) -> None:
        with connection():
            regions.announce(self.ident, self.regions, time.time(), self.settings.dispatch_region_lease)

    def keep_regions(self, done: threading.Event) -> None:
        """Renew the regions every quarter of their lease from a thread of its own until ``done``:
        a round's job can take longer than the lease, and a hold that lapsed meanwhile would let
        the other dispatchers serve this one's region."""
        every = self.settings.dispatch_region_lease / 4
        while not done.wait(every) and not self.stop.is_set():
            try:
                self.announce()
            except Exception:
                log.exception("could not renew the regions; retrying")

    def withdraw(self) -> None:
        """Hand this dispatcher's regions to the others now rather than when their lease runs out."""
        if not self.regions:
            return
        try:
            with connection():
                regions.withdraw(self.ident, self.regions)
        except Exception:
            log.exception("could not withdraw the regions; the others take them when the lease runs out")

    def _run_round(self) -> Round:
        started = time.monotonic()
        serving = self.scope().clause()
        kills = reaper.reap(self.settings, serving)
        tasks = claims.claim(self.ident, self.claim_limit, lease=self.settings.task_lease,
                             placement=self.settings.dispatch_placement,
                             reserve_after=self.settings.placement_reserve_after, nodes=serving)
        targets: dict[int, dict[str, Any]] = {}
        if tasks:
            tasks = self._known_types(tasks)
            with connection():
                tasks, targets = uploads.plan(tasks)  # an uploader with nowhere to upload fails now
                tasks, endpoints = transfers.plan(tasks)  # a transfer's two providers
                targets.update(endpoints)
        if not tasks and not kills:
            return Round()
        with connection():
            inventory, plays = build_inventory(tasks, kills, self.settings.task_lease, targets)
        try:
            outcome = self.run_job(inventory, plays, [t.id for t in tasks])
        except Exception as exc:
            log.exception("dispatch job could not run")
            result, sink = Round(status="error"), jobs.EventSink()
            sink.failed_hosts.update(inventory["all"]["hosts"])
            reason = f"dispatch job could not run: {type(exc).__name__}"
        else:
            sink = outcome.sink
            result = Round(job_dir=outcome.job_dir, status=outcome.status, rc=outcome.rc, reached=outcome.reached)
            reason = f"dispatch job {result.status} (rc {result.rc})"
        self._apply(result, sink, tasks, kills, reason, inventory["all"]["hosts"])
        result.hosts = len(inventory["all"]["hosts"])
        result.seconds = time.monotonic() - started
        log.info("round: %d launched on %d nodes, %d released, %d refused, %d killed, %d ended, job %s in %.2fs",
                 sum(len(v) for v in result.launched.values()), len(result.launched), len(result.released),
                 len(result.refused), len(result.killed), len(result.ended), result.status, result.seconds)
        self.rotate()
        return result

    def _apply(self, result: Round, sink: jobs.EventSink, tasks: list[Task], kills: list[Task],
               reason: str, hosts: dict[str, dict[str, Any]]) -> None:
        """Record what the job did: launches stand, the rest goes back, kills without a runner end.

        Nodes whose host key was refused are cordoned, saying why; those reached lose an old reason.
        """
        refused = {}
        for host, message in sink.unreachable.items():
            why = jobs.host_key_refusal(host, hosts.get(host, {}), message, self.settings.dispatch_known_hosts)
            if why:
                log.error("%s", why)
                refused[host] = why
        with connection():
            nodes.record_dispatch(refused, [h for h in hosts if h not in sink.failed_hosts])
            for task in tasks:
                host = task.node.name
                refusal = sink.rejected.get((host, task.id))
                if refusal is not None:
                    # Its own params cannot run (the launch module says why): this task fails, alone;
                    # running it again, here or elsewhere, would fail the same way.
                    if states.transition(task.id, "failed", f"refused by node {host}: {refusal}",
                                         expect=("assigned",)):
                        result.refused.append(task.id)
                    continue
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

    def _known_types(self, tasks: list[Task]) -> list[Task]:
        """Fail tasks whose type's playbook has gone since they were submitted."""
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

    @property
    def actor(self) -> str:
        return f"dispatcher:{self.ident}"

    def record(self, done: Round, *, error: bool) -> None:
        """Count the round; write the health row after a round that worked, or every
        ``HEALTH_EVERY`` seconds when idle (``GET /metrics`` reads it)."""
        worked = done.status != "idle"
        self.stats.add(seconds=done.seconds, hosts=done.hosts, error=error, worked=worked)
        t = time.time()
        if not worked and t - self.flushed_at < HEALTH_EVERY:
            return
        try:
            with connection():
                telemetry.record_rounds(self.ident, self.stats, t)
        except Exception:
            log.exception("could not record the dispatcher's health; keeping it for the next round")
            return
        self.stats = telemetry.RoundStats()
        self.flushed_at = t

    def housekeeping(self) -> None:
        """Prune past retention when it is this dispatcher's turn (``control.farm.retention``)."""
        try:
            with connection():
                retention.maybe_prune(self.settings)
        except Exception:
            log.exception("pruning failed; it is tried again after prune_interval")

    def fire_schedules(self) -> list[schedules.Fired]:
        """Launch the schedules due now that no other dispatcher fired first (``control.farm.schedules``).

        Once per loop, so a due time waits at most one round; a failure is logged and tried
        again next loop (the due time it did not fire stays due).
        """
        try:
            with connection(), actors.acting(self.actor):
                return schedules.fire_due(self.settings)
        except Exception:
            log.exception("firing schedules failed; retrying next round")
            return []

    def serve(self, max_rounds: int | None = None) -> None:
        keeper, done = None, threading.Event()
        if self.regions:
            self.announce()  # held before the first claim
            keeper = threading.Thread(target=self.keep_regions, args=(done,), name="regions", daemon=True)
            keeper.start()
        with actors.acting(self.actor):
            try:
                self._serve(max_rounds)
            finally:
                done.set()
                if keeper is not None:
                    keeper.join(5)
                self.withdraw()

    def _serve(self, max_rounds: int | None) -> None:
        rounds = 0
        backoff = 0.0
        while not self.stop.is_set():
            error = False
            self.fire_schedules()  # first: a task it launches is claimed in this very round
            try:
                done = self.run_round()
            except Exception:
                log.exception("dispatch round failed; retrying")
                done, error = Round(status="error"), True
            error = error or done.status == "error"
            self.record(done, error=error)
            self.housekeeping()
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


def main(settings: Settings, *, ident: str | None, claim_limit: int, rounds: int | None) -> int:
    """``zonefarm dispatcher``: serve rounds until SIGTERM or SIGINT (then finish the round)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    jobs.scrub_environ()
    init_database(settings.database_url, settings.db_pool_size)
    dispatcher = Dispatcher(settings, ident=ident, claim_limit=claim_limit)

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after this round", signum)
        dispatcher.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("dispatcher %s: jobs in %s; regions: %s", dispatcher.ident, dispatcher.jobs_dir,
             ", ".join(dispatcher.regions) or "all not held by another dispatcher")
    dispatcher.serve(max_rounds=rounds)
    return 0

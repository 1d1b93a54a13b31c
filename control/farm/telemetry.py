"""Farm figures for ``GET /metrics``, computed from the database at scrape time.

Any API worker answers a scrape with the same numbers, whatever process did the work:
task and node counts, queue age and free slots, outcomes, each dispatcher's rounds. The
dispatcher writes its own health here (``record_rounds``) rather than serving a port, so
one scrape target covers the farm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import peewee

from control.core.db import write_transaction
from control.core.models import now
from control.farm.models import ACTIVE, BROADCAST_KINDS, TERMINAL, DispatcherHealth, Housekeeping, Node, Task

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)
HOSTS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, math.inf)
OUTCOME_PREFIX = "outcome:"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


@dataclass
class Histogram:
    """Cumulative bucket counts, as Prometheus exposes them, kept as JSON in the database."""

    bounds: tuple[float, ...]
    buckets: dict[str, int] = field(default_factory=dict)
    sum: float = 0.0
    count: int = 0

    @classmethod
    def load(cls, bounds: tuple[float, ...], data: dict[str, Any] | None) -> Histogram:
        data = data or {}
        return cls(bounds, dict(data.get("buckets") or {}), float(data.get("sum") or 0), int(data.get("count") or 0))

    def observe(self, value: float) -> None:
        for bound in self.bounds:
            if value <= bound:
                self.buckets[_le(bound)] = self.buckets.get(_le(bound), 0) + 1
        self.sum += value
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n
        self.sum += other.sum
        self.count += other.count

    def dump(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "sum": self.sum, "count": self.count}

    def cumulative(self) -> list[tuple[str, int]]:
        return [(_le(b), self.buckets.get(_le(b), 0)) for b in self.bounds]


@dataclass
class RoundStats:
    """A dispatcher's rounds since its last flush to the database."""

    rounds: int = 0
    errors: int = 0
    duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    hosts: Histogram = field(default_factory=lambda: Histogram(HOSTS_BUCKETS))

    def add(self, *, seconds: float, hosts: int, error: bool, worked: bool) -> None:
        """Every round counts; only rounds that ran a job go into the two histograms
        (idle rounds every ``dispatch_interval`` would drown them)."""
        self.rounds += 1
        self.errors += int(error)
        if worked:
            self.duration.observe(seconds)
            self.hosts.observe(hosts)


def record_rounds(ident: str, stats: RoundStats, t: float | None = None) -> None:
    """Add a dispatcher's pending round figures to its health row (created on first use)."""
    t = now() if t is None else t
    with write_transaction():
        DispatcherHealth.insert(ident=ident, started_at=t, last_round_at=t, duration={},
                                hosts={}).on_conflict_ignore().execute()
        row = DispatcherHealth.get(DispatcherHealth.ident == ident)
        duration = Histogram.load(DURATION_BUCKETS, row.duration)
        duration.merge(stats.duration)
        hosts = Histogram.load(HOSTS_BUCKETS, row.hosts)
        hosts.merge(stats.hosts)
        (DispatcherHealth.update(last_round_at=t, rounds=DispatcherHealth.rounds + stats.rounds,
                                 errors=DispatcherHealth.errors + stats.errors,
                                 duration=duration.dump(), hosts=hosts.dump())
         .where(DispatcherHealth.id == row.id).execute())


def dispatchers() -> list[DispatcherHealth]:
    return list(DispatcherHealth.select().order_by(DispatcherHealth.ident))


def tasks_by_state_and_queue() -> list[tuple[str, str, int]]:
    """(state, queue, count) of the tasks that run (broadcast parents only summarise)."""
    return list(Task.select(Task.state, Task.queue, peewee.fn.COUNT(Task.id))
                .where(Task.target_kind.not_in(BROADCAST_KINDS))
                .group_by(Task.state, Task.queue).tuples())


def oldest_queued_age(t: float | None = None) -> dict[str, float]:
    """Per queue, seconds the longest-waiting queued task has waited."""
    t = now() if t is None else t
    rows = (Task.select(Task.queue, peewee.fn.MIN(Task.created_at))
            .where(Task.state == "queued", Task.target_kind.not_in(BROADCAST_KINDS))
            .group_by(Task.queue).tuples())
    return {queue: max(0.0, t - oldest) for queue, oldest in rows}


def nodes_by_state() -> dict[str, int]:
    return dict(Node.select(Node.state, peewee.fn.COUNT(Node.id)).group_by(Node.state).tuples())


def free_slots() -> dict[str, int]:
    """Per queue, the slots free on nodes that take work now (online, not cordoned or draining).

    A node serving several queues counts its free slots in each: they are what each queue
    could get, not a partition.
    """
    busy = dict(Task.select(Task.node, peewee.fn.COUNT(Task.id))
                .where(Task.state.in_(ACTIVE), Task.node.is_null(False))
                .group_by(Task.node).tuples())
    out: dict[str, int] = {}
    for node in Node.select().where(Node.state != "deregistered"):
        for queue in node.queues or []:
            out.setdefault(queue, 0)
            if node.state == "online" and not node.cordoned and not node.draining:
                out[queue] += max(0, node.concurrency - busy.get(node.id, 0))
    return out


def outcomes() -> dict[tuple[str, str], int]:
    """Finished tasks per (type, outcome): those in the database plus those the pruner deleted,
    so the total only ever grows."""
    out: dict[tuple[str, str], int] = {}
    rows = (Task.select(Task.name, Task.state, peewee.fn.COUNT(Task.id))
            .where(Task.state.in_(TERMINAL), Task.target_kind.not_in(BROADCAST_KINDS))
            .group_by(Task.name, Task.state).tuples())
    for name, state, n in rows:
        out[(name, state)] = out.get((name, state), 0) + n
    for row in Housekeeping.select().where(Housekeeping.name.startswith(OUTCOME_PREFIX)):
        state, _, name = row.name[len(OUTCOME_PREFIX):].partition(":")
        out[(name, state)] = out.get((name, state), 0) + row.value
    return out

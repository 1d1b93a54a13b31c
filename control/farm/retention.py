"""Retention: the pruner deletes what the settings say is no longer kept.

* finished tasks (``retention_tasks_days`` after they finished), with their events and logs;
* the logs of finished tasks earlier, if ``retention_logs_days`` is shorter;
* webhook deliveries delivered or failed, with the finished tasks (``retention_tasks_days``);
* change-feed entries older than ``retention_feed_days``, never the newest one (it is
  the feed's head, and SQLite would hand its number out again);
* tokens, node join tokens, invites and support tokens expired more than ``retention_tokens_days`` ago;
* nonces of signed node requests older than twice the allowed clock skew.

It runs in the dispatcher loop every ``prune_interval`` seconds. Each dispatcher tries; the
one whose guarded UPDATE of the ``prune`` marker matches runs it, the others skip, on both
databases. Deletes go in batches of ``BATCH`` rows, each its own transaction, so a large
first prune never holds SQLite's write lock for long.

The deleted finished tasks are tallied per type and outcome (``control.farm.telemetry``)
so the outcome counter of ``GET /metrics`` does not go down. The highest change number
deleted is kept too: a provider resuming from before it gets 410 and resynchronises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import peewee

from control.core.config import Settings
from control.core.db import write_transaction
from control.core.models import now
from control.farm.models import BROADCAST_KINDS, TERMINAL, Housekeeping, NodeJoinToken, Nonce, Task, TaskEvent, TaskLog
from control.farm.telemetry import OUTCOME_PREFIX
from control.farm.webhooks.service import prune_deliveries
from control.registry.models import Change, Invite, SupportToken, Token

log = logging.getLogger("zonefarm.retention")

DAY = 86400.0
BATCH = 500
PRUNE_MARKER = "prune"
FEED_MARKER = "feed_pruned_seq"


@dataclass
class Pruned:
    """Rows deleted by one pass, per kind."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


def _marker(name: str) -> None:
    Housekeeping.insert(name=name, last_run=0, value=0).on_conflict_ignore().execute()


def claim_turn(settings: Settings, t: float, *, force: bool = False) -> bool:
    """True when this process should prune now: nobody did in the last ``prune_interval``."""
    with write_transaction():
        _marker(PRUNE_MARKER)
        query = Housekeeping.update(last_run=t).where(Housekeeping.name == PRUNE_MARKER)
        if not force:
            query = query.where(Housekeeping.last_run <= t - settings.prune_interval)
        return bool(query.execute())


def feed_pruned_seq() -> int:
    """The highest change number the pruner deleted (0: none); changes after it are all kept."""
    return Housekeeping.select(Housekeeping.value).where(Housekeeping.name == FEED_MARKER).scalar() or 0


def _tally(ids: list[int]) -> None:
    rows = (Task.select(Task.name, Task.state, peewee.fn.COUNT(Task.id))
            .where((Task.id.in_(ids) | Task.parent.in_(ids)), Task.state.in_(TERMINAL),
                   Task.target_kind.not_in(BROADCAST_KINDS))
            .group_by(Task.name, Task.state).tuples())
    for name, state, n in rows:
        key = f"{OUTCOME_PREFIX}{state}:{name}"[:250]
        _marker(key)
        Housekeeping.update(value=Housekeeping.value + n).where(Housekeeping.name == key).execute()


def _prune_tasks(cutoff: float, pruned: Pruned) -> None:
    """Top-level finished tasks (a broadcast with its children), their events and logs."""
    while True:
        with write_transaction():
            ids = [r.id for r in Task.select(Task.id)
                   .where(Task.parent.is_null(), Task.state.in_(TERMINAL), Task.finished_at < cutoff)
                   .order_by(Task.id).limit(BATCH)]
            if not ids:
                return
            _tally(ids)
            family = Task.select(Task.id).where(Task.id.in_(ids) | Task.parent.in_(ids))
            pruned.add("task_logs", TaskLog.delete().where(TaskLog.task.in_(family)).execute())
            pruned.add("task_events", TaskEvent.delete().where(TaskEvent.task.in_(family)).execute())
            pruned.add("tasks", Task.delete().where(Task.parent.in_(ids)).execute())
            pruned.add("tasks", Task.delete().where(Task.id.in_(ids)).execute())


def _prune_logs(cutoff: float, pruned: Pruned) -> None:
    finished = Task.select(Task.id).where(Task.state.in_(TERMINAL), Task.finished_at < cutoff)
    while True:
        with write_transaction():
            ids = [r.id for r in TaskLog.select(TaskLog.id).where(TaskLog.task.in_(finished)).limit(BATCH)]
            if not ids:
                return
            pruned.add("task_logs", TaskLog.delete().where(TaskLog.id.in_(ids)).execute())


def _prune_feed(cutoff: float, pruned: Pruned) -> None:
    while True:
        with write_transaction():
            head = Change.select(peewee.fn.MAX(Change.seq)).scalar() or 0
            seqs = [r.seq for r in Change.select(Change.seq).where(Change.ts < cutoff, Change.seq < head)
                    .order_by(Change.seq).limit(BATCH)]
            if not seqs:
                return
            _marker(FEED_MARKER)
            (Housekeeping.update(value=seqs[-1])
             .where(Housekeeping.name == FEED_MARKER, Housekeeping.value < seqs[-1]).execute())
            pruned.add("changes", Change.delete().where(Change.seq.in_(seqs)).execute())


def prune(settings: Settings, t: float | None = None) -> Pruned:
    """Delete everything past its retention, now; returns what went. Callers claim the turn first."""
    t = now() if t is None else t
    pruned = Pruned()
    _prune_tasks(t - settings.retention_tasks_days * DAY, pruned)
    if settings.retention_logs_days < settings.retention_tasks_days:
        _prune_logs(t - settings.retention_logs_days * DAY, pruned)
    _prune_feed(t - settings.retention_feed_days * DAY, pruned)
    pruned.add("webhook_deliveries", prune_deliveries(t - settings.retention_tasks_days * DAY))
    token_cutoff = t - settings.retention_tokens_days * DAY
    with write_transaction():
        pruned.add("tokens", Token.delete().where(Token.expires_at.is_null(False),
                                                  Token.expires_at < token_cutoff).execute())
        pruned.add("join_tokens", NodeJoinToken.delete().where(NodeJoinToken.expires_at < token_cutoff).execute())
        pruned.add("invites", Invite.delete().where(Invite.expires_at < token_cutoff).execute())
        pruned.add("support_tokens", SupportToken.delete().where(SupportToken.expires_at < token_cutoff).execute())
        pruned.add("nonces", Nonce.delete().where(Nonce.ts < t - 2 * settings.callback_skew).execute())
    done = {k: n for k, n in pruned.counts.items() if n}
    if done:
        log.info("pruned %s", ", ".join(f"{n} {k}" for k, n in sorted(done.items())))
    return pruned


def maybe_prune(settings: Settings, t: float | None = None) -> Pruned | None:
    """Prune if it is this process's turn (see the module docstring); None when it was not."""
    t = now() if t is None else t
    if not claim_turn(settings, t):
        return None
    return prune(settings, t)

"""Audit (who did each change and task event, ``GET /audit``) and retention (the pruner,
its lock, the database shrinking back, 410 for a provider behind the kept feed)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from control.core.config import Settings
from control.core.db import connection, database, is_postgres
from control.core.models import now
from control.farm import retention, telemetry
from control.farm.dispatcher.loop import Dispatcher
from control.farm.models import Housekeeping, NodeJoinToken, Nonce, Task, TaskEvent, TaskLog
from control.provider.agent import Follower, ProviderConfig
from control.registry.models import Change, Invite, SupportToken, Token
from tests.support import registry
from tests.support.client import Api

DAY = 86400.0


def test_actors_are_recorded_and_root_reads_the_audit(api: Api) -> None:
    alice = api.make_user("alice")
    bob, token = api.submitter("bob")
    group = registry.group(api, token, "g-bob")
    task = api.post("/tasks", token=token, json={"name": "shell", "params": {"argv": ["true"]}}).json()

    everything = api.get("/audit?limit=500", token=api.root)
    assert everything.status_code == 200
    items = everything.json()["items"]
    assert [i["ts"] for i in items] == sorted((i["ts"] for i in items), reverse=True)
    by_entity = {(i["kind"], i["entity"], i["entity_id"], i["action"]): i["actor"] for i in items}
    assert by_entity[("change", "user", alice["id"], "create")] == "root"
    assert by_entity[("change", "group", group["id"], "create")] == f"user:{bob['id']}"
    assert by_entity[("task_event", "task", task["id"], "-->queued")] == f"user:{bob['id']}"

    only_users = api.get("/audit", token=api.root, params={"actor": "user:"}).json()
    assert only_users["total"] >= 2 and all(i["actor"].startswith("user:") for i in only_users["items"])
    roots = api.get("/audit", token=api.root, params={"actor": "root", "kind": "change"}).json()
    assert roots["items"] and all(i["actor"] == "root" and i["kind"] == "change" for i in roots["items"])
    events = api.get("/audit", token=api.root, params={"kind": "task_event", "entity_id": task["id"]}).json()
    assert events["total"] == 1
    future = api.get("/audit", token=api.root, params={"after": "2999-01-01T00:00:00Z"}).json()
    assert future["total"] == 0 and future["items"] == []
    page = api.get("/audit", token=api.root, params={"limit": 2, "offset": 1}).json()
    assert page["items"] == items[1:3]

    # a provider redeeming a support token acts as itself, not as root or the space's admin
    prov, ptoken = registry.provider(api, "prov1")
    space = registry.space(api, token, "s-bob")
    registry.support(api, token, space["id"], prov["id"], provider_token=ptoken)
    supports = api.get("/audit", token=api.root, params={"kind": "change", "entity": "support"}).json()["items"]
    assert [(i["action"], i["actor"]) for i in supports] == [("create", f"provider:{prov['id']}")], supports

    assert api.get("/audit", token=token).status_code == 403
    assert api.get("/audit").status_code == 401
    bad = api.get("/audit", token=api.root, params={"after": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"


def _old_farm(t: float, n: int) -> None:
    """``n`` tasks finished 40 days ago, each with events and a large log, and old changes."""
    for i in range(n):
        task = Task.create(name="shell", state="succeeded" if i % 2 else "failed", created_at=t - 41 * DAY,
                           finished_at=t - 40 * DAY)
        TaskEvent.create(task=task, ts=t - 41 * DAY, to_state="queued", reason="old")
        for seq in range(4):
            TaskLog.create(task=task, seq=seq, start=seq * 4000, ts=t - 40 * DAY, text=os.urandom(2000).hex())
    for i in range(n):
        Change.create(entity="user", entity_id=i, op="update", ts=t - 100 * DAY, data={"pad": "x" * 500})


def _size() -> int:
    """Bytes the database takes once free space is given back."""
    if is_postgres():
        database.execute_sql("VACUUM FULL")
        return database.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]
    database.execute_sql("VACUUM")
    return database.execute_sql("PRAGMA page_count").fetchone()[0] * \
        database.execute_sql("PRAGMA page_size").fetchone()[0]


def test_pruning_deletes_past_retention_and_the_database_shrinks_back(settings: Settings, api: Api) -> None:
    t = now()
    with connection():
        recent = Task.create(name="shell", state="succeeded", finished_at=t - DAY)
        running = Task.create(name="shell", state="running", created_at=t - 50 * DAY)
        Token.create(token_hash="a" * 64, kind="user", expires_at=t - 8 * DAY)
        Token.create(token_hash="b" * 64, kind="user", expires_at=t - DAY)
        Nonce.create(value="old-nonce", node="n1", ts=t - 3600)
        head = Change.create(entity="user", entity_id=0, op="update", ts=t - 100 * DAY)  # newest: kept
        baseline = _size()
        _old_farm(t, 300)
        head = Change.create(entity="user", entity_id=0, op="update", ts=t - 100 * DAY)
        grown = _size()
        outcomes_before = telemetry.outcomes()

        pruned = retention.prune(settings, t)

        assert pruned.counts["tasks"] == 300 and pruned.counts["task_logs"] == 1200
        assert pruned.counts["task_events"] == 300
        assert pruned.counts["changes"] == 301  # every old change but the newest
        assert pruned.counts["tokens"] == 1 and pruned.counts["nonces"] == 1
        assert {t_.id for t_ in Task.select()} == {recent.id, running.id}
        assert [c.seq for c in Change.select()] == [head.seq]
        assert retention.feed_pruned_seq() == head.seq - 1
        assert telemetry.outcomes() == outcomes_before  # the counter never goes down
        shrunk = _size()
    assert grown > baseline + 1_000_000
    assert shrunk < baseline + (grown - baseline) * 0.1, (baseline, grown, shrunk)


def test_logs_kept_shorter_than_tasks_and_old_grants_of_entry_pruned(settings: Settings, api: Api) -> None:
    """``retention_logs_days`` < ``retention_tasks_days``: the log goes, the task and its events
    stay. Invites, support tokens and node join tokens expired past ``retention_tokens_days``
    go; younger ones (expired or not) stay."""
    _, token = api.submitter("alice")
    space = registry.space(api, token, "s1")
    prov, _ = registry.provider(api, "prov1")
    settings = replace(settings, retention_logs_days=7, retention_tasks_days=30, retention_tokens_days=7)
    t = now()
    with connection():
        task = Task.create(name="shell", state="succeeded", created_at=t - 11 * DAY, finished_at=t - 10 * DAY)
        TaskEvent.create(task=task, ts=t - 10 * DAY, to_state="succeeded", reason="old")
        TaskLog.create(task=task, seq=0, start=0, ts=t - 10 * DAY, text="old log")
        fresh = Task.create(name="shell", state="succeeded", finished_at=t - DAY)
        TaskLog.create(task=fresh, seq=0, start=0, ts=t - DAY, text="new log")
        kept, gone = {}, {}
        for age, into in ((8, gone), (1, kept)):
            exp = t - age * DAY
            into["invite"] = Invite.create(token_hash=f"i{age}".ljust(64, "0"), space=space["id"], subject="user",
                                           expires_at=exp).id
            into["support"] = SupportToken.create(token_hash=f"s{age}".ljust(64, "0"), space=space["id"],
                                                  provider=prov["id"], expires_at=exp).id
            into["join"] = NodeJoinToken.create(token_hash=f"j{age}".ljust(64, "0"), name=f"wk{age}",
                                                expires_at=exp).id

        pruned = retention.prune(settings, t)

        assert pruned.counts["task_logs"] == 1 and pruned.counts.get("tasks", 0) == 0
        assert [r.text for r in TaskLog.select()] == ["new log"]
        assert {r.id for r in Task.select()} == {task.id, fresh.id}
        assert [e.reason for e in TaskEvent.select().where(TaskEvent.task == task.id)] == ["old"]
        assert pruned.counts["invites"] == pruned.counts["support_tokens"] == pruned.counts["join_tokens"] == 1
        for model, key in ((Invite, "invite"), (SupportToken, "support"), (NodeJoinToken, "join")):
            assert [r.id for r in model.select()] == [kept[key]], model
    assert api.get(f"/tasks/{task.id}", token=api.root).json()["state"] == "succeeded"
    assert api.get(f"/tasks/{task.id}/log", token=api.root).json()["text"] == ""


def test_the_dispatcher_loop_prunes(settings: Settings, api: Api) -> None:
    """One idle round of a real dispatcher ends with its housekeeping: the pruner ran."""
    with connection():
        old = Token.create(token_hash="c" * 64, kind="user", expires_at=now() - 30 * DAY)
    Dispatcher(settings, ident="d-prune").serve(max_rounds=1)
    with connection():
        assert Token.get_or_none(Token.id == old.id) is None
        assert Housekeeping.get(Housekeeping.name == "prune").last_run > now() - 60


def test_one_pruner_at_a_time(settings: Settings, api: Api) -> None:
    t = now()
    with connection():
        assert retention.claim_turn(settings, t)
        assert not retention.claim_turn(settings, t + 1)  # another process within prune_interval
        assert retention.maybe_prune(settings, t + 2) is None
        assert retention.claim_turn(settings, t + settings.prune_interval + 1)
        assert Housekeeping.get(Housekeeping.name == "prune").last_run == t + settings.prune_interval + 1


def test_a_provider_behind_the_pruned_feed_gets_410_and_resyncs(settings: Settings, api: Api,
                                                                  tmp_path: Path) -> None:
    prov, ptoken = registry.provider(api, "prov1")
    for i in range(3):
        api.make_user(f"user{i}")
    first = api.get("/changes?since=0", token=ptoken).json()
    with connection():
        last = Change.select().order_by(Change.seq.desc()).first().seq
        Change.update(ts=now() - 200 * DAY).where(Change.seq < last).execute()
        retention.prune(settings)
        pruned = retention.feed_pruned_seq()
    assert pruned == last - 1
    gone = api.get("/changes?since=1", token=ptoken)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone"
    assert "resynchronise from 0" in gone.json()["error"]["message"]
    assert api.get(f"/changes?since={pruned}", token=ptoken).status_code == 200
    assert api.get("/changes?since=0", token=ptoken).status_code == 200
    del first

    state = tmp_path / "state.json"
    state.write_text('{"seq": 1}')
    config = ProviderConfig(path="", token_file="", api_url=api.base, token=ptoken, provider_id=prov["id"],
                            storage_path=str(tmp_path / "storage"), state_file=str(state))
    follower = Follower(config)
    assert follower.step(timeout=0) == 0 and follower.seq == 0  # told to resync: starts over
    follower.step(timeout=0)
    assert follower.seq == last


@pytest.mark.parametrize("missing", ["retention_feed_days"])
def test_retention_defaults_are_generous(missing: str) -> None:
    s = Settings()
    assert s.retention_tasks_days == 30 and s.retention_feed_days == 90
    assert getattr(s, missing) >= 30

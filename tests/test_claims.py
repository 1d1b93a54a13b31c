"""Claims, state transitions and the reaper against real SQLite and PostgreSQL databases.

No HTTP here: these are the functions the dispatcher calls. The race tests use real
threads (SQLite, PostgreSQL) and real processes (PostgreSQL) on one database.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from control.core.config import Settings
from control.core.db import connection, database, init_database, is_postgres
from control.farm import states
from control.farm.claims import claim
from control.farm.eligibility import Want, assess, load_usage
from control.farm.explain import explain
from control.farm.models import Node, Task, TaskEvent
from control.farm.reaper import reap


@pytest.fixture
def db(db_url: str) -> Iterator[str]:
    init_database(db_url, pool_size=20)
    yield db_url
    database.obj.close_all()


def node(name: str, *, concurrency: int = 2, queues: tuple[str, ...] = ("default",), region: str = "default",
         **kw: object) -> Node:
    with connection():
        return Node.create(name=name, concurrency=concurrency, queues=list(queues), region=region,
                           workdir=f"/tmp/{name}", config_path=f"/tmp/{name}.ini", **kw)


def task(**kw: object) -> int:
    kw.setdefault("name", "shell")
    kw.setdefault("params", {"argv": ["true"]})
    with connection():
        return Task.create(**kw).id


def get(task_id: int) -> Task:
    with connection():
        return Task.get_by_id(task_id)


def events(task_id: int) -> list[tuple[str | None, str]]:
    with connection():
        return [(e.from_state, e.to_state) for e in TaskEvent.select().where(TaskEvent.task == task_id)
                .order_by(TaskEvent.id)]


def test_claim_orders_by_priority_then_age_and_respects_slots(db: str) -> None:
    node("n1", concurrency=2)
    old = task(created_at=time.time() - 100)
    new = task()
    urgent = task(priority=5)
    claimed = claim("d1", 10)
    assert [t.id for t in claimed] == [urgent, old]
    assert all(t.state == "assigned" and t.attempt == 1 and t.node.name == "n1" for t in claimed)
    assert claimed[0].node_name == "n1" and claimed[0].params == {"argv": ["true"]}
    assert get(new).state == "queued"
    assert claim("d1", 10) == []  # no free slot left
    assert events(urgent) == [("queued", "assigned")]


def test_claim_matches_queue_target_and_skips_cordoned_and_lost_nodes(db: str) -> None:
    node("small", queues=("small",))
    node("cordoned", queues=("large",), cordoned=True)
    node("gone", queues=("large",), state="lost")
    node("pinned", queues=("other",))
    t_small = task(queue="small")
    t_large = task(queue="large")
    t_pinned = task(target_kind="node", target_value="pinned")
    t_missing = task(target_kind="node", target_value="nowhere")
    claimed = {t.id: t.node.name for t in claim("d1", 10)}
    assert claimed == {t_small: "small", t_pinned: "pinned"}
    assert get(t_large).state == "queued" and get(t_missing).state == "queued"


def test_claim_never_picks_broadcast_parents_and_limit_holds(db: str) -> None:
    node("n1", concurrency=10)
    parent = task(target_kind="all")
    kids = [task(target_kind="node", target_value="n1", parent=parent) for _ in range(3)]
    claimed = claim("d1", 2)
    assert len(claimed) == 2 and {t.id for t in claimed} <= set(kids)
    assert get(parent).state == "running"  # summarised from its children


def test_requeued_task_prefers_another_node(db: str) -> None:
    node("a", concurrency=5)
    node("b", concurrency=1)
    task(last_node="a", attempt=1)
    [claimed] = claim("d1", 1)
    assert claimed.node.name == "b" and claimed.attempt == 2


def test_pack_fills_a_node_before_the_next_and_spread_evens_them(db: str) -> None:
    """Pack keeps a burst to the fewest hosts (each host costs its own Ansible run in a round)."""
    for name in ("a", "b", "c"):
        node(name, concurrency=3)
    ids = [task() for _ in range(4)]
    packed = Counter(t.node.name for t in claim("d1", 4))
    assert packed == Counter({"a": 3, "b": 1})
    more = [task() for _ in range(3)]
    # b already runs one: it is the fullest node with room, so it is filled next
    assert Counter(t.node.name for t in claim("d1", 3)) == Counter({"b": 2, "c": 1})
    with connection():
        Task.update(state="succeeded").where(Task.id.in_(ids + more)).execute()
    for _ in range(3):
        task()
    assert Counter(t.node.name for t in claim("d1", 3, placement="spread")) == Counter({"a": 1, "b": 1, "c": 1})


def test_transition_is_guarded_and_exactly_one_terminal_state_wins(db: str) -> None:
    node("n1")
    tid = task()
    claim("d1", 1)
    assert states.transition(tid, "running", "started")
    assert not states.transition(tid, "queued", "not allowed from running")
    results: list[bool] = []

    def finish(to: str) -> None:
        with connection():
            results.append(states.transition(tid, to, f"race {to}"))

    threads = [threading.Thread(target=finish, args=(s,)) for s in ("succeeded", "failed", "cancelled",
                                                                     "timed_out") * 2]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.count(True) == 1
    final = get(tid)
    assert final.state in ("succeeded", "failed", "cancelled", "timed_out") and final.finished_at
    assert [e for e in events(tid) if e[1] == final.state] == [("running", final.state)]


def test_release_requeues_then_fails_when_attempts_are_spent(db: str) -> None:
    node("n1")
    tid = task(max_attempts=2)
    claim("d1", 1)
    assert states.release(tid, "launch failed") == "queued"
    assert get(tid).node_id is None
    claim("d1", 1)
    assert get(tid).attempt == 2
    assert states.release(tid, "launch failed") == "failed"
    assert states.release(tid, "again") is None
    assert [to for _, to in events(tid)] == ["assigned", "queued", "assigned", "failed"]


def _settings(db_url: str, **kw: object) -> Settings:
    return Settings(database=db_url, root_secret="x" * 16, nodes_secret="y" * 16, **kw)


def test_reaper_loses_silent_nodes_tasks_and_requeues_them(db: str) -> None:
    node("a")
    node("b", last_seen=time.time() - 1000)  # silent: lost at the first reap
    with connection():
        Node.update(cordoned=True).where(Node.name == "a").execute()
    tid = task(max_attempts=2)
    [c] = claim("d1", 1)
    assert c.node.name == "b"
    states.transition(tid, "running", "started")
    reap(_settings(db, node_lease=60))
    with connection():
        assert Node.get(Node.name == "b").state == "lost"
    t = get(tid)
    assert t.state == "queued" and t.last_node == "b" and t.node_id is None
    assert [to for _, to in events(tid)] == ["assigned", "running", "lost", "queued"]
    with connection():
        Node.update(cordoned=False).where(Node.name == "a").execute()
    [again] = claim("d1", 1)
    assert again.node.name == "a" and again.attempt == 2


def test_reaper_expires_leases_and_fails_when_attempts_are_spent(db: str) -> None:
    node("a")
    tid = task(max_attempts=1)
    claim("d1", 1, lease=0.01)
    time.sleep(0.05)
    reap(_settings(db))
    t = get(tid)
    assert t.state == "failed" and "no attempts left" in events_reasons(tid)[-1]


def events_reasons(task_id: int) -> list[str]:
    with connection():
        return [e.reason for e in TaskEvent.select().where(TaskEvent.task == task_id).order_by(TaskEvent.id)]


def test_reaper_hands_out_kills_once_and_finishes_unconfirmed_ones(db: str) -> None:
    node("a", concurrency=3)
    cancel_me = task()
    too_long = task(timeout=1)
    fine = task()
    claim("d1", 3)
    for tid in (cancel_me, too_long, fine):
        states.transition(tid, "running", "started", lease_expires_at=time.time() + 60)
    with connection():
        Task.update(cancel_requested=True).where(Task.id == cancel_me).execute()
        Task.update(started_at=time.time() - 10).where(Task.id == too_long).execute()
    settings = _settings(db, task_lease=60)
    kills = {t.id: t.kill_reason for t in reap(settings)}
    assert kills == {cancel_me: "cancelled", too_long: "timed_out"}
    assert reap(settings) == []  # handed out once per lease
    # the worker never confirms: when the lease runs out they end, never requeued
    with connection():
        Task.update(lease_expires_at=time.time() - 1).where(Task.id.in_([cancel_me, too_long])).execute()
    reap(settings)
    assert get(cancel_me).state == "cancelled" and get(too_long).state == "timed_out"
    assert get(fine).state == "running"


def _claimer(url: str, name: str, out: list[int], rounds: int) -> None:
    for _ in range(rounds):
        got = claim(name, 7)
        out.extend(t.id for t in got)
        with connection():
            for t in got:
                states.transition(t.id, "succeeded", "done", expect=("assigned",))


def test_two_claimers_in_threads_never_claim_the_same_task(db: str) -> None:
    for i in range(4):
        node(f"n{i}", concurrency=5)
    ids = [task() for _ in range(120)]
    a: list[int] = []
    b: list[int] = []
    threads = [threading.Thread(target=_claimer, args=(db, "d-a", a, 40)),
               threading.Thread(target=_claimer, args=(db, "d-b", b, 40))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    both = Counter(a + b)
    assert not [i for i, n in both.items() if n > 1]
    assert set(both) == set(ids)
    with connection():
        assert TaskEvent.select().where(TaskEvent.to_state == "assigned").count() == 120


def _process_claimer(url: str, name: str, queue: multiprocessing.Queue, start: object, rounds: int) -> None:
    init_database(url, pool_size=2)
    start.wait(60)  # both processes begin claiming together
    got: list[int] = []
    _claimer(url, name, got, rounds)
    queue.put(got)


def test_two_dispatcher_processes_never_claim_the_same_task(db: str) -> None:
    """PostgreSQL: row locks with SKIP LOCKED; SQLite: one guarded UPDATE per claim."""
    for i in range(5):
        node(f"n{i}", concurrency=4)
    ids = [task(priority=i % 3) for i in range(200)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_process_claimer, args=(db, f"d{i}", queue, start, 60)) for i in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    both = Counter(results[0] + results[1])
    assert not [i for i, n in both.items() if n > 1], "a task was claimed twice"
    assert set(both) == set(ids)
    if is_postgres():
        # SKIP LOCKED lets both work at once; SQLite's single writer may let one take all.
        assert results[0] and results[1], "both dispatchers should have claimed work"


def test_claim_fan_out_and_explain_share_one_rule(db: str) -> None:
    """Each node but one refuses for its own reason; the claim takes that one, explain names the rest."""
    node("cordoned", cordoned=True)
    node("draining", cordoned=True, draining=True)
    node("lost", state="lost", last_seen=time.time() - 600)
    node("other-queue", queues=("gpu",))
    node("busy", concurrency=1)
    node("free", concurrency=1)
    node("gone", state="deregistered")
    filler = task(target_kind="node", target_value="busy")
    assert [t.id for t in claim("d1", 10)] == [filler]
    waiting = task()
    with connection():
        nodes = list(Node.select().order_by(Node.name))
        found = assess(Task.get_by_id(waiting), nodes, load_usage())
        assert [n.name for n in found.fits] == ["free"]
        assert {name: r.code for name, r in found.rejected.items()} == {
            "busy": "node_busy", "cordoned": "node_cordoned", "draining": "node_draining",
            "gone": "node_deregistered", "lost": "node_lost", "other-queue": "queue_not_served"}
        # a broadcast's fan-out leaves capacity out: the busy node still gets a child
        fan_out = assess(Want("all", None, "default"), nodes, None)
        assert [n.name for n in fan_out.fits] == ["busy", "free"]
    (claimed,) = claim("d1", 10)
    assert claimed.id == waiting and claimed.node.name == "free"
    blocked = task()
    with connection():
        why = explain(Task.get_by_id(blocked))
    assert [b["code"] for b in why["blockers"]] == ["no_node_available"]
    assert why["why"].startswith("none of the 5 node(s) serving queue 'default' can take it: "
                                 "2 busy, 1 cordoned, 1 draining, 1 lost")


def test_dispatcher_regions_split_the_nodes_and_lapse_with_their_lease(db: str) -> None:
    """A dispatcher serves its regions and those nobody live holds; a region another holds is
    left to it, until that one withdraws or its lease runs out. Kills follow the same split."""
    from control.farm import regions
    eu, us, ap = node("eu1", region="eu"), node("us1", region="us"), node("ap1", region="ap")
    t = time.time()
    with connection():
        regions.announce("d-eu", ["eu"], t, 30)
        regions.announce("d-us", ["us"], t - 31, 30)  # its lease ran out: us is nobody's
        eu_scope = regions.scope("d-eu", ["eu"], t, 30)
        assert eu_scope.others == frozenset()
        regions.announce("d-us", ["us"], t, 30)
        eu_scope = regions.scope("d-eu", ["eu"], t, 30)
        free_scope = regions.scope("d-any", [], t, 30)
    assert eu_scope.others == {"us"} and free_scope.others == {"eu", "us"}
    ids = {n.name: task(target_kind="node", target_value=n.name) for n in (eu, us, ap)}
    assert {c.node_name for c in claim("d-eu", 10, nodes=eu_scope.clause())} == {"eu1", "ap1"}
    assert get(ids["us1"]).state == "queued"
    assert claim("d-any", 10, nodes=free_scope.clause()) == []  # ap1 is full, the rest held
    with connection():
        us_scope = regions.scope("d-us", ["us"], t, 30)
    assert [c.node_name for c in claim("d-us", 10, nodes=us_scope.clause())] == ["us1"]
    with connection():
        Task.update(cancel_requested=True).where(Task.id.in_(list(ids.values()))).execute()
    killed = reap(Settings(task_lease=5), eu_scope.clause())
    assert sorted(k.node.name for k in killed) == ["ap1", "eu1"]  # not us1's host: d-us kills there
    assert [k.node.name for k in reap(Settings(task_lease=5), us_scope.clause())] == ["us1"]
    with connection():
        regions.withdraw("d-us", ["us"])
        assert regions.scope("d-eu", ["eu"], t, 30).others == frozenset()
        regions.announce("d-gone", ["eu"], t - 301, 30)  # long dead: forgotten by the next announce
        regions.announce("d-eu", ["eu"], t, 30)
        assert regions.held(t - 1000, 30) == {"eu": {"d-eu"}}

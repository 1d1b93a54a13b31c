"""Signed task callbacks over real HTTP on both databases: the whole life of a task as the
worker's runner reports it, the log growing, cancel and timeout answers, lost and
requeued attempts, and replayed, stale, forged and misdirected callbacks refused.

Claims and reaper passes run in-process on the live server's database, standing in
for a dispatcher round; the runner itself is exercised by the dispatch tests.
"""

from __future__ import annotations

import logging
import time

import pytest

from control.core.config import Settings
from control.core.db import connection
from control.farm import states
from control.farm.claims import claim
from control.farm.models import Task
from control.farm.reaper import reap
from tests.conftest import NODES_SECRET
from tests.support.client import Api
from tests.support.nodes import SignedNode


def node(api: Api, name: str, **kw: object) -> SignedNode:
    n = SignedNode(api, name, NODES_SECRET)
    assert n.register(**kw).status_code in (200, 201)
    return n


def submit(api: Api, **body: object) -> int:
    resp = api.post("/tasks", token=api.root, json={"name": "shell", "params": {"argv": ["echo", "hi"]}, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def show(api: Api, task_id: int) -> dict:
    return api.get(f"/tasks/{task_id}", token=api.root).json()


def test_full_life_started_log_progress_finished(api: Api, settings: Settings) -> None:
    wk = node(api, "wk1")
    tid = submit(api)
    [claimed] = claim("d1", 5)
    assert claimed.id == tid and claimed.attempt == 1
    started = wk.callback(tid, "started", 1)
    assert started.status_code == 200, started.text
    assert started.json() == {"cancel": False, "state": "running", "lease": settings.task_lease}
    assert wk.callback(tid, "log", 1, data="hello\n").status_code == 200
    log = api.get(f"/tasks/{tid}/log", token=api.root).json()
    assert log == {"offset": 0, "next_offset": 6, "text": "hello\n", "complete": False}
    assert wk.callback(tid, "progress", 1, percent=40.5).status_code == 200
    assert show(api, tid)["progress"] == 40.5
    assert wk.callback(tid, "log", 1, data="world\n").status_code == 200
    more = api.get(f"/tasks/{tid}/log", token=api.root, params={"offset": 6}).json()
    assert more["text"] == "world\n" and more["next_offset"] == 12
    mid = api.get(f"/tasks/{tid}/log", token=api.root, params={"offset": 8}).json()
    assert mid["text"] == "rld\n"
    done = wk.callback(tid, "finished", 1, exit_code=0, outputs={"files": ["a.txt"]})
    assert done.json()["state"] == "succeeded" and done.json()["cancel"] is False
    task = show(api, tid)
    assert task["state"] == "succeeded" and task["exit_code"] == 0 and task["outputs"] == {"files": ["a.txt"]}
    assert task["started_at"] and task["finished_at"] and task["progress"] == 100
    events = api.get(f"/tasks/{tid}/events", token=api.root).json()
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "queued"), ("queued", "assigned"), ("assigned", "running"), ("running", "succeeded")]
    assert api.get(f"/tasks/{tid}/log", token=api.root, params={"offset": 12}).json()["complete"] is True


def test_terminal_report_is_idempotent(api: Api) -> None:
    wk = node(api, "wk1")
    tid = submit(api)
    claim("d1", 1)
    first = wk.callback(tid, "finished", 1, exit_code=3)
    assert first.status_code == 200 and first.json()["state"] == "failed"
    second = wk.callback(tid, "finished", 1, exit_code=0)
    assert second.status_code == 200 and second.json()["state"] == "failed"
    events = api.get(f"/tasks/{tid}/events", token=api.root).json()
    assert [e["to_state"] for e in events].count("failed") == 1
    assert show(api, tid)["exit_code"] == 3
    # the runner's only report (the task ended within its start grace) still leaves a running event
    assert [(e["from_state"], e["to_state"]) for e in events][-2:] == [("assigned", "running"), ("running", "failed")]
    assert "reported with its end" in events[-2]["reason"] and show(api, tid)["started_at"]


def test_callbacks_from_the_wrong_node_or_a_stale_attempt_are_403(api: Api) -> None:
    wk1 = node(api, "wk1", concurrency=1)
    wk2 = node(api, "wk2", concurrency=1)
    tid = submit(api, target={"node": "wk1"})
    queued = wk1.callback(tid, "started", 1)
    assert queued.status_code == 403  # not assigned to anyone yet
    claim("d1", 5)
    assert wk2.callback(tid, "started", 1).status_code == 403
    assert wk1.callback(tid, "started", 2).status_code == 403
    assert wk1.callback(99999, "started", 1).status_code == 404
    assert wk1.callback(tid, "started", 1).status_code == 200
    assert show(api, tid)["state"] == "running"


def test_replayed_stale_and_forged_callbacks_are_rejected(api: Api) -> None:
    wk = node(api, "wk1")
    tid = submit(api)
    claim("d1", 1)
    path = f"/tasks/{tid}/callback"
    body = {"event": "finished", "attempt": 1, "exit_code": 0}
    forged = wk.request("POST", path, body, key="guessed-secret-guessed-secret")
    stale = wk.request("POST", path, body, timestamp=int(time.time()) - 3600)
    assert forged.status_code == stale.status_code == 401
    # The node name is signed (and part of the key): a relabelled request does not verify.
    impostor = wk.request("POST", path, body, headers={"X-Zonefarm-Node": "wk2"})
    assert impostor.status_code == 401 and "bad signature" in impostor.json()["error"]["message"]
    # Another node signing as itself is authenticated, and refused: not its task.
    other = SignedNode(api, "wk2", NODES_SECRET)
    assert other.request("POST", path, body).status_code == 403
    # a refused request spends its nonce all the same: sent again, it is a replay
    again = other.replay("POST", path)
    assert again.status_code == 401 and "replay" in again.json()["error"]["message"]
    assert show(api, tid)["state"] == "assigned"
    ok = wk.callback(tid, "log", 1, data="once\n")
    assert ok.status_code == 200
    replayed = wk.replay("POST", path)
    assert replayed.status_code == 401 and "replay" in replayed.json()["error"]["message"]
    assert api.get(f"/tasks/{tid}/log", token=api.root).json()["text"] == "once\n"
    missing_exit = wk.callback(tid, "finished", 1)
    assert missing_exit.status_code == 422 and "exit_code" in missing_exit.json()["error"]["message"]
    bad_event = wk.callback(tid, "exploded", 1)
    assert bad_event.status_code == 422 and "event" in bad_event.json()["error"]["message"]


def test_cancel_reaches_the_runner_and_it_reports_cancelled(api: Api, settings: Settings) -> None:
    wk = node(api, "wk1")
    tid = submit(api)
    claim("d1", 1)
    assert wk.callback(tid, "started", 1).json()["cancel"] is False
    assert api.post(f"/tasks/{tid}/cancel", token=api.root).status_code == 200
    assert wk.callback(tid, "progress", 1).json()["cancel"] is True
    kills = reap(settings)
    assert [(t.id, t.kill_reason, t.node.name) for t in kills] == [(tid, "cancelled", "wk1")]
    end = wk.callback(tid, "finished", 1, exit_code=-15, reason="cancelled")
    assert end.json() == {"cancel": True, "state": "cancelled", "lease": settings.task_lease}
    assert show(api, tid)["state"] == "cancelled"


def test_timeout_kill_ends_timed_out(api: Api, settings: Settings) -> None:
    wk = node(api, "wk1")
    tid = submit(api, timeout=1)
    claim("d1", 1)
    wk.callback(tid, "started", 1)
    with connection():
        Task.update(started_at=time.time() - 5).where(Task.id == tid).execute()
    kills = reap(settings)
    assert [(t.id, t.kill_reason) for t in kills] == [(tid, "timed_out")]
    wk.callback(tid, "finished", 1, exit_code=-15, reason="timed_out")
    assert show(api, tid)["state"] == "timed_out"


def test_runner_killed_mid_task_is_lost_requeued_and_finished_on_another_node(api: Api,
                                                                             settings: Settings) -> None:
    wk1 = node(api, "wk1", concurrency=1)
    wk2 = node(api, "wk2", concurrency=1)
    tid = submit(api)
    [first] = claim("d1", 1, lease=settings.task_lease)
    runner, other = (wk1, wk2) if first.node.name == "wk1" else (wk2, wk1)
    assert runner.callback(tid, "started", 1).status_code == 200
    # the runner dies: no callback renews the lease; the node agent still heartbeats
    with connection():
        Task.update(lease_expires_at=time.time() - 1).where(Task.id == tid).execute()
    runner.heartbeat()
    reap(settings)
    task = show(api, tid)
    assert task["state"] == "queued" and task["last_node"] == runner.name and task["node"] is None
    [second] = claim("d1", 1, lease=settings.task_lease)
    assert second.node.name == other.name and second.attempt == 2
    # the dead attempt's late report is refused; the new one completes
    assert runner.callback(tid, "finished", 1, exit_code=0).status_code == 403
    assert other.callback(tid, "started", 2).status_code == 200
    assert other.callback(tid, "finished", 2, exit_code=0).json()["state"] == "succeeded"
    states_seen = [e["to_state"] for e in api.get(f"/tasks/{tid}/events", token=api.root).json()]
    assert states_seen == ["queued", "assigned", "running", "lost", "queued", "assigned", "running", "succeeded"]


def test_broadcast_parent_summarises_children(api: Api) -> None:
    nodes = [node(api, f"wk{i}") for i in range(3)]
    resp = api.post("/tasks", token=api.root, json={"name": "shell", "params": {"argv": ["true"]},
                                                   "target": {"all": True}})
    parent = resp.json()
    claim("d1", 10)
    kids = {c["node"]: c["id"] for c in show(api, parent["id"])["children"]}
    assert show(api, parent["id"])["state"] == "running"
    for i, n in enumerate(nodes):
        n.callback(kids[n.name], "started", 1)
        n.callback(kids[n.name], "finished", 1, exit_code=0 if i else 1)
    final = show(api, parent["id"])
    assert final["state"] == "failed"
    assert sorted(c["state"] for c in final["children"]) == ["failed", "succeeded", "succeeded"]


def test_nodes_secret_never_appears_in_responses_or_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wk = node(api, "wk1")
    tid = submit(api)
    claim("d1", 1)
    bodies = [
        wk.callback(tid, "started", 1).text,
        wk.request("POST", f"/tasks/{tid}/callback", {"event": "progress", "attempt": 1}, key="x" * 20).text,
        wk.replay("POST", f"/tasks/{tid}/callback").text,
        api.get("/nodes", token=api.root).text,
        api.get("/inventory", token=api.root).text,
        api.get(f"/tasks/{tid}", token=api.root).text,
        api.get(f"/tasks/{tid}/events", token=api.root).text,
        api.get("/openapi.json").text,
    ]
    for text in bodies + [caplog.text]:
        assert NODES_SECRET not in text


def test_lease_is_renewed_by_callbacks(api: Api, settings: Settings) -> None:
    wk = node(api, "wk1")
    tid = submit(api)
    claim("d1", 1, lease=1)
    with connection():
        before = Task.get_by_id(tid).lease_expires_at
    wk.callback(tid, "progress", 1)
    with connection():
        after = Task.get_by_id(tid).lease_expires_at
    assert after >= before + settings.task_lease - 5
    with connection():
        assert states.transition(tid, "lost", "test", expect=("running",))
    assert wk.callback(tid, "progress", 1).status_code == 403


def test_concurrent_callbacks_and_heartbeats_never_fail(api: Api) -> None:
    """Many runners reporting at once: on SQLite every writer must queue for the lock, not 500."""
    from concurrent.futures import ThreadPoolExecutor

    nodes = {f"wk{i}": node(api, f"wk{i}", concurrency=4) for i in range(4)}
    ids = [submit(api) for _ in range(16)]
    claimed = claim("d1", 16)
    assert len(claimed) == 16

    def run(task: Task) -> list[int]:
        wk = SignedNode(Api(api.base, api.root), task.node.name, NODES_SECRET)
        codes = [wk.callback(task.id, "started", 1).status_code]
        for i in range(3):
            codes.append(wk.callback(task.id, "log", 1, data=f"line {i}\n").status_code)
            codes.append(wk.heartbeat().status_code)
        codes.append(wk.callback(task.id, "finished", 1, exit_code=0).status_code)
        return codes

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, claimed))
    assert all(code == 200 for codes in results for code in codes), results
    for tid in ids:
        assert show(api, tid)["state"] == "succeeded"
        assert api.get(f"/tasks/{tid}/log", token=api.root).json()["text"] == "line 0\nline 1\nline 2\n"
    assert len(nodes) == 4


def _log(api: Api, task_id: int) -> str:
    return api.get(f"/tasks/{task_id}/log", token=api.root).json()["text"]


def test_a_retried_log_callback_stores_its_text_once(api: Api, settings: Settings) -> None:
    """The API stored a chunk but its answer was lost, so the runner sends it again (new nonce, same offset)."""
    wk = node(api, "wk1", concurrency=1)
    wk2 = node(api, "wk2", concurrency=1)
    tid = submit(api, target={"node": "wk1"})
    claim("d1", 1, lease=settings.task_lease)
    for _ in range(2):
        sent = wk.callback(tid, "log", 1, data="hello\n", offset=0)
        assert sent.status_code == 200 and sent.json()["state"] == "running", sent.text
    assert _log(api, tid) == "hello\n"
    # a retry that carries more output than before: only the new tail is stored
    assert wk.callback(tid, "log", 1, data="hello\nworld\n", offset=0).status_code == 200
    assert wk.callback(tid, "log", 1, data="world\n", offset=6).status_code == 200
    assert _log(api, tid) == "hello\nworld\n"
    # without an offset (an older runner) a chunk is appended as it comes
    assert wk.callback(tid, "log", 1, data="!\n").status_code == 200
    assert _log(api, tid) == "hello\nworld\n!\n"
    negative = wk.callback(tid, "log", 1, data="x", offset=-1)
    assert negative.status_code == 422 and "offset" in negative.json()["error"]["message"]

    # the next attempt counts its offsets from its own start, after the earlier attempt's output
    with connection():
        Task.update(lease_expires_at=time.time() - 1).where(Task.id == tid).execute()
        Task.update(target_value="wk2").where(Task.id == tid).execute()
    wk.heartbeat()
    reap(settings)
    [second] = claim("d1", 1, lease=settings.task_lease)
    assert second.attempt == 2 and second.node.name == "wk2"
    assert wk.callback(tid, "log", 1, data="late\n", offset=14).status_code == 403
    for _ in range(2):
        assert wk2.callback(tid, "log", 2, data="again\n", offset=0).status_code == 200
    assert wk2.callback(tid, "finished", 2, exit_code=0).json()["state"] == "succeeded"
    assert _log(api, tid) == "hello\nworld\n!\nagain\n"
    log_starts = [e["data"]["log_start"] for e in api.get(f"/tasks/{tid}/events", token=api.root).json()
                  if e["to_state"] == "running"]
    assert log_starts == [0, 14]

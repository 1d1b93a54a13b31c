"""Schedules over real HTTP on SQLite and PostgreSQL: the API, and firing as the dispatchers do it.

``fire_due`` runs in-process against the live server's database with a chosen clock, as
a dispatcher loop would call it (real ``zonefarm dispatcher`` processes fire in
tests/test_schedule_dispatchers.py).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from control.core.config import Settings
from control.core.db import connection
from control.farm import schedules
from control.farm.models import Schedule
from tests.support.client import Api

SPEC = {"name": "shell", "params": {"argv": ["true"]}}


def template(api: Api, token: str, name: str = "nightly") -> dict[str, Any]:
    resp = api.post("/templates", token=token, json={"name": name, "spec": SPEC})
    assert resp.status_code == 201, resp.text
    return resp.json()


def schedule(api: Api, token: str, **body: Any) -> dict[str, Any]:
    resp = api.post("/schedules", token=token, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def due_of(schedule_id: int) -> float:
    with connection():
        return Schedule.get_by_id(schedule_id).next_run


def fire(settings: Settings, t: float) -> list[schedules.Fired]:
    with connection():
        return schedules.fire_due(settings, t)


def test_create_validate_and_show(api: Api) -> None:
    _, token = api.submitter("alice")
    tpl = template(api, token)
    cron = schedule(api, token, template=tpl["id"], cron="30 2 * * *", timezone="Europe/Paris")
    nxt = datetime.fromisoformat(cron["next_run"].replace("Z", "+00:00"))
    assert (nxt.minute, nxt.hour) in ((30, 1), (30, 0))  # 02:30 in Paris is 01:30 or 00:30 UTC
    assert cron["owner"] is not None and cron["skip_if_running"] is True and cron["last_run"] is None
    for body, field in (({"cron": "61 * * * *"}, "cron"), ({"cron": "* * *"}, "cron"), ({"cron": "0 0 30 2 *"}, "cron"),
                        ({"cron": "*/0 * * * *"}, "cron"),
                        ({"interval": 60, "timezone": "Mars/Olympus"}, "timezone"),
                        ({"interval": 60, "timezone": "../../etc/passwd"}, "timezone"),
                        ({"interval": 0}, "interval"), ({}, "cron"), ({"cron": "* * * * *", "interval": 5}, "cron"),
                        ({"interval": 60, "template": 999999}, "template")):
        bad = api.post("/schedules", token=token, json={"template": tpl["id"], **body})
        assert bad.status_code == 422 and field in bad.json()["error"]["message"], (body, bad.text)
    off = api.patch(f"/schedules/{cron['id']}", token=token, json={"enabled": False}).json()
    assert off["enabled"] is False and off["next_run"] is None
    on = api.patch(f"/schedules/{cron['id']}", token=token, json={"interval": 600, "enabled": True}).json()
    assert on["cron"] is None and on["interval"] == 600 and on["next_run"] is not None
    # seen by whoever sees the template; a stranger neither sees nor changes it, nor schedules alice's template
    _, bob_token = api.submitter("bob")
    assert api.get(f"/schedules/{cron['id']}", token=bob_token).status_code == 403
    assert api.get("/schedules", token=bob_token).json()["total"] == 0
    assert api.delete(f"/schedules/{cron['id']}", token=bob_token).status_code == 403
    assert api.post("/schedules", token=bob_token, json={"template": tpl["id"], "interval": 60}).status_code == 403
    assert api.get("/schedules", token=token, params={"template": tpl["id"]}).json()["total"] == 1
    assert api.delete(f"/schedules/{cron['id']}", token=token).status_code == 204


def test_firing_launches_skips_while_running_and_fires_once_after_downtime(api: Api, settings: Settings) -> None:
    alice, token = api.submitter("alice")
    tpl = template(api, token)
    sch = schedule(api, token, template=tpl["id"], interval=60)
    first = due_of(sch["id"])
    assert fire(settings, first - 1) == []  # not due yet
    [fired] = fire(settings, first)
    assert fired.outcome == "launched" and fired.due == first
    shown = api.get(f"/schedules/{sch['id']}", token=token).json()
    assert shown["last_task"] == fired.task and shown["last_outcome"] == "launched"
    assert abs(epoch(shown["next_run"]) - (first + 60)) < 0.001 and shown["last_run"] is not None
    assert due_of(sch["id"]) == first + 60
    task = api.get(f"/tasks/{fired.task}", token=token).json()
    assert (task["template"], task["schedule"], task["owner"]) == (tpl["id"], sch["id"], alice["id"])
    # the task is still queued: the next due time is skipped (skip_if_running is on by default)
    [skipped] = fire(settings, first + 60)
    assert skipped.outcome == "skipped" and str(fired.task) in skipped.error
    assert api.post(f"/tasks/{fired.task}/cancel", token=token).status_code == 200
    # down for ten intervals: one firing, and the next due time is the first after now, in phase
    [late] = fire(settings, first + 60 * 11 + 5)
    assert late.outcome == "launched" and late.due == first + 120
    assert due_of(sch["id"]) == first + 60 * 12
    assert fire(settings, first + 60 * 11 + 6) == []
    [_, again] = [fired, *fire(settings, first + 60 * 12)]
    assert again.outcome == "skipped"  # the late task is still queued


def test_a_failed_firing_is_recorded_and_in_the_audit(api: Api, settings: Settings) -> None:
    alice, token = api.submitter("alice")
    tpl = template(api, token)
    sch = schedule(api, token, template=tpl["id"], interval=30, skip_if_running=False)
    grant = api.get("/grants", token=api.root, params={"user": alice["id"]}).json()["items"][0]
    assert api.delete(f"/grants/{grant['id']}", token=api.root).status_code == 204
    [failed] = fire(settings, due_of(sch["id"]))
    assert failed.outcome == "failed" and "no grant" in failed.error
    shown = api.get(f"/schedules/{sch['id']}", token=token).json()
    assert shown["last_outcome"] == "failed" and "no grant" in shown["last_error"] and shown["last_task"] is None
    assert api.get("/tasks", token=api.root).json()["total"] == 0
    audit = api.get("/audit", token=api.root, params={"entity": "schedule"}).json()["items"]
    assert [(a["entity_id"], a["action"], a["data"]["event"]) for a in audit] == [
        (sch["id"], "update", "schedule_failed")]
    assert "no grant" in audit[0]["data"]["error"] and audit[0]["actor"] == "system"
    mine = api.get("/changes", token=token).json()  # the owner reads it in its change feed
    assert [c["data"]["event"] for c in mine["changes"] if c["entity"] == "schedule"] == ["schedule_failed"]


def test_two_firers_on_one_due_time_fire_it_once(api: Api, settings: Settings) -> None:
    tpl = template(api, api.root)
    ids = [schedule(api, api.root, template=tpl["id"], interval=60, skip_if_running=False)["id"] for _ in range(5)]
    dues = {i: due_of(i) for i in ids}
    barrier = threading.Barrier(2)
    results: list[list[schedules.Fired]] = [[], []]

    def firer(slot: int) -> None:
        barrier.wait()
        for i in ids:
            with connection():
                done = schedules.fire_one(i, dues[i], settings, dues[i] + 1)
            if done is not None:
                results[slot].append(done)

    threads = [threading.Thread(target=firer, args=(n,)) for n in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    fired = sorted(f.schedule for r in results for f in r)
    assert fired == sorted(ids)  # each schedule fired once, by one of the two
    assert api.get("/tasks", token=api.root).json()["total"] == 5

"""Webhooks end to end, on both databases: made and guarded over HTTP, events queued with the
change that causes them, delivered by the real sender thread to a real receiver on
127.0.0.1 that checks each signature; retries, timeouts, redirects and the egress rule.

The live API allows loopback deliveries (``webhook_allow = 127.0.0.0/8``, as a test site
would); the refusal at send time is shown by a sender run with the default setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from control.core import egress
from control.core.config import Settings
from control.core.db import connection, write_transaction
from control.core.egress import Allow, parse_allow, pick_address
from control.core.models import now
from control.farm import retention, schedules, states
from control.farm.reaper import lost_nodes
from control.farm.webhooks import events, service
from control.farm.webhooks.delivery import Outcome, Sender, attempt
from control.farm.webhooks.events import Subject
from control.farm.webhooks.models import Webhook, WebhookDelivery
from control.node.signing import payload_signature, sign_payload, verify_payload
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.apiproc import ZONEFARM, ApiProcess, api_env
from tests.support.client import Api
from tests.support.leaks import assert_no_secrets, files_under
from tests.support.nodes import SignedNode
from tests.support.pg import free_port
from tests.support.receiver import Receiver, receiving
from tests.support.registry import error, join, space

SHELL = {"name": "shell", "params": {"argv": ["echo", "hi"]}}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, webhook_allow="127.0.0.0/8", webhook_timeout=0.5, webhook_backoff=0.05,
                               webhook_backoff_max=0.1, webhook_max_attempts=4, webhook_poll_interval=0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as rec:
        yield rec


@pytest.fixture
def sender(api: Api, settings: Settings) -> Iterator[Sender]:
    """The sender thread of an API process, on the live server's database."""
    running = Sender(settings, "test-sender").start()
    yield running
    running.stop()


def hook(api: Api, token: str, receiver: Receiver, path: str, events: list[str], **extra: Any) -> dict[str, Any]:
    resp = api.post("/webhooks", token=token, json={"url": receiver.url + path, "events": events, **extra})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    receiver.secrets[made["id"]] = made["secret"]
    return made


def deliveries(api: Api, token: str, hook_id: int) -> list[dict[str, Any]]:
    resp = api.get(f"/webhooks/{hook_id}/deliveries", token=token)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def settled(api: Api, token: str, hook_id: int, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
    """The delivery log once ``count`` deliveries are delivered or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = deliveries(api, token, hook_id)
        if len(items) >= count and all(d["status"] != "pending" for d in items):
            return items
        time.sleep(0.05)
    raise AssertionError(f"deliveries of webhook {hook_id} still pending: {deliveries(api, token, hook_id)}")


def submit(api: Api, token: str, **extra: Any) -> int:
    resp = api.post("/tasks", token=token, json={**SHELL, **extra})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def cancel(api: Api, token: str, task_id: int) -> None:
    resp = api.post(f"/tasks/{task_id}/cancel", token=token)
    assert resp.status_code == 200 and resp.json()["state"] == "cancelled", resp.text


# --- the resource -----------------------------------------------------------------------


def test_webhooks_belong_to_their_owner_and_show_the_secret_once(api: Api, receiver: Receiver,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    alice, alice_t = api.submitter("alice")
    _, bob_t = api.user_with_token("bob")
    made = hook(api, alice_t, receiver, "/ok", ["task.failed", "task.cancelled", "task.failed"],
                description="nightly")
    wid, secret = made["id"], made["secret"]
    assert len(secret) == 64 and made["owner"] == alice["id"] and made["scope"] == "own"
    assert made["events"] == ["task.cancelled", "task.failed"] and made["secret_generation"] == 0
    shown = api.get(f"/webhooks/{wid}", token=alice_t)
    listed = api.get("/webhooks", token=alice_t)
    assert shown.status_code == listed.status_code == 200 and listed.json()["total"] == 1
    assert "secret" not in shown.json() and secret not in shown.text and secret not in listed.text
    # another user: nothing to see or change; the administrator sees all
    for resp in (api.get(f"/webhooks/{wid}", token=bob_t), api.patch(f"/webhooks/{wid}", token=bob_t, json={}),
                 api.delete(f"/webhooks/{wid}", token=bob_t), api.post(f"/webhooks/{wid}/test", token=bob_t),
                 api.get(f"/webhooks/{wid}/deliveries", token=bob_t),
                 api.post(f"/webhooks/{wid}/secret", token=bob_t)):
        assert "only the user who made a webhook" in error(resp, 403)
    assert api.get("/webhooks", token=bob_t).json()["total"] == 0
    assert [h["id"] for h in api.get("/webhooks", token=api.root).json()["items"]] == [wid]
    # scopes: everything is the administrator's; a space takes membership of it
    url = receiver.url + "/ok"
    assert "only the administrator" in error(api.post("/webhooks", token=alice_t, json={
        "url": url, "events": ["task.failed"], "scope": "all"}), 403)
    other = space(api, bob_t, "bobs")
    assert "not a member" in error(api.post("/webhooks", token=alice_t, json={
        "url": url, "events": ["task.failed"], "scope": "space", "scope_id": other["id"]}), 403)
    assert "not found" in error(api.post("/webhooks", token=alice_t, json={
        "url": url, "events": ["task.failed"], "scope": "space", "scope_id": 999}), 422)
    assert "needs the id" in error(api.post("/webhooks", token=alice_t, json={
        "url": url, "events": ["task.failed"], "scope": "template"}), 422)
    # what a URL may be
    for bad, needle in (("ftp://example.org/x", "should match pattern"), ("http://u:pw@example.org/", "user name"),
                        ("http://10.1.2.3/hook", "10.1.2.3 of 10.1.2.3 is private"),
                        ("http://169.254.169.254/latest", "is link-local"), ("https://[::1]:8/x", "is loopback")):
        message = error(api.post("/webhooks", token=alice_t, json={"url": bad, "events": ["task.failed"]}), 422)
        assert message.startswith("url: ") and needle in message, message
        assert ("webhook_allow" in message) == ("is " in needle), message
    assert error(api.post("/webhooks", token=alice_t, json={"url": url, "events": ["task.exploded"]}), 422)
    # changes, rotation, a disabled webhook is not tested, deletion
    patched = api.patch(f"/webhooks/{wid}", token=alice_t, json={"events": ["task.succeeded"], "enabled": False})
    assert patched.status_code == 200 and patched.json()["events"] == ["task.succeeded"]
    assert not patched.json()["enabled"] and secret not in patched.text
    assert "disabled" in error(api.post(f"/webhooks/{wid}/test", token=alice_t), 409)
    # a scope changed is checked as a whole, with the same rules as at creation
    assert "only the administrator" in error(api.patch(f"/webhooks/{wid}", token=alice_t, json={"scope": "all"}), 403)
    assert "not a member" in error(api.patch(f"/webhooks/{wid}", token=alice_t, json={
        "scope": "space", "scope_id": other["id"]}), 403)
    mine = space(api, alice_t, "alices")
    moved = api.patch(f"/webhooks/{wid}", token=alice_t, json={"scope": "space", "scope_id": mine["id"]}).json()
    assert (moved["scope"], moved["scope_id"]) == ("space", mine["id"])
    assert "needs the id" in error(api.patch(f"/webhooks/{wid}", token=alice_t, json={"scope_id": None}), 422)
    back = api.patch(f"/webhooks/{wid}", token=alice_t, json={"scope": "own"}).json()  # the id goes with it
    assert (back["scope"], back["scope_id"]) == ("own", None)
    rotated = api.post(f"/webhooks/{wid}/secret", token=alice_t).json()
    assert rotated["secret_generation"] == 1 and len(rotated["secret"]) == 64 and rotated["secret"] != secret
    assert api.delete(f"/webhooks/{wid}", token=alice_t).status_code == 204
    assert api.get(f"/webhooks/{wid}", token=alice_t).status_code == 404
    # a bounded number per user; a deleted user's webhooks go with it (its id may be handed out again)
    monkeypatch.setattr(service, "MAX_PER_OWNER", 2)
    hook(api, alice_t, receiver, "/ok", ["task.failed"])
    hook(api, alice_t, receiver, "/ok", ["task.failed"])
    assert "at most 2 webhooks" in error(api.post("/webhooks", token=alice_t, json={
        "url": url, "events": ["task.failed"]}), 409)
    assert api.delete(f"/users/{alice['id']}", token=api.root).status_code == 204
    assert api.get("/webhooks", token=api.root).json()["total"] == 0


# --- delivery ---------------------------------------------------------------------------


def test_signed_deliveries_retry_until_the_receiver_answers(api: Api, receiver: Receiver, sender: Sender,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice, alice_t = api.submitter("alice")
    _, bob_t = api.submitter("bob")
    flaky = hook(api, alice_t, receiver, "/flaky", ["task.cancelled", "task.failed"])
    bobs = hook(api, bob_t, receiver, "/ok", ["task.cancelled"])  # own scope: not alice's tasks
    everything = hook(api, api.root, receiver, "/ok", ["task.cancelled"])  # root's: scope all
    tid = submit(api, alice_t)
    cancel(api, alice_t, tid)
    [log] = settled(api, alice_t, flaky["id"])
    # the receiver failed twice, then took it: all three attempts are in the log's counters
    assert log["status"] == "delivered" and log["attempts"] == 3 and log["event"] == "task.cancelled"
    assert log["last_status_code"] == 200 and log["last_error"] == "answered 500" and log["delivered_at"]
    got = receiver.at("/flaky")
    assert len(got) == 3 and {r.verified for r in got} == {"ok"}
    assert len({r.body for r in got}) == 1  # every attempt sends the same bytes, signed afresh
    body = got[0].json
    assert body["event"] == "task.cancelled" and body["webhook"] == flaky["id"] and body["id"] == log["id"]
    assert body["data"]["task"]["id"] == tid and body["data"]["task"]["owner"] == alice["id"]
    assert body["data"]["task"]["state"] == "cancelled" and "params" not in body["data"]["task"]
    assert got[0].headers["X-Zonefarm-Event"] == "task.cancelled"
    assert got[0].headers["X-Zonefarm-Delivery"] == str(log["id"])
    # root's scope-all webhook got it once; bob's own-scope webhook saw nothing of alice's task
    [root_log] = settled(api, api.root, everything["id"])
    assert root_log["status"] == "delivered" and root_log["attempts"] == 1
    assert deliveries(api, bob_t, bobs["id"]) == []
    # the test route queues a webhook.test delivery the sender delivers
    queued = api.post(f"/webhooks/{flaky['id']}/test", token=alice_t)
    assert queued.status_code == 202 and queued.json()["status"] == "pending"
    latest = settled(api, alice_t, flaky["id"], 2)[0]
    assert latest["event"] == "webhook.test" and latest["status"] == "delivered" and latest["attempts"] == 1
    assert receiver.at("/flaky")[-1].json["event"] == "webhook.test"
    # a tampered body or an old timestamp does not verify with the secret
    headers = got[0].headers
    with pytest.raises(ValueError, match="bad signature"):
        verify_payload(flaky["secret"], headers, got[0].body.replace(b"cancelled", b"succeeded"))
    with pytest.raises(ValueError, match="window"):
        verify_payload(flaky["secret"], headers, got[0].body, now=time.time() + 3600)
    # no secret in any log line, nor in any answer but the one that made it
    logged = caplog.text
    for made in (flaky, bobs, everything):
        assert made["secret"] not in logged
        assert made["secret"] not in api.get(f"/webhooks/{made['id']}/deliveries", token=api.root).text
    assert "webhook" in logged  # the sender did log its attempts


def test_space_scope_follows_the_owners_membership(api: Api, receiver: Receiver, sender: Sender) -> None:
    _, alice_t = api.submitter("alice")
    carol, carol_t = api.user_with_token("carol")
    shared = space(api, alice_t, "shared")
    join(api, alice_t, "spaces", shared["id"], carol["id"])
    watch = hook(api, carol_t, receiver, "/ok", ["task.cancelled"], scope="space", scope_id=shared["id"])
    cancel(api, alice_t, submit(api, alice_t, space=shared["id"]))
    cancel(api, alice_t, submit(api, alice_t))  # not in the space: not carol's to see
    [first] = settled(api, carol_t, watch["id"])
    assert first["status"] == "delivered"
    # carol leaves the space: its tasks' events stop reaching her webhook
    assert api.delete(f"/spaces/{shared['id']}/users/{carol['id']}", token=alice_t).status_code == 204
    cancel(api, alice_t, submit(api, alice_t, space=shared["id"]))
    assert len(deliveries(api, carol_t, watch["id"])) == 1


def test_timeouts_redirects_and_internal_addresses_fail_the_attempt(api: Api, receiver: Receiver,
                                                                    settings: Settings) -> None:
    _, alice_t = api.submitter("alice")
    slow = hook(api, alice_t, receiver, "/slow", ["task.cancelled"])
    trickle = hook(api, alice_t, receiver, "/trickle", ["task.cancelled"])
    moved = hook(api, alice_t, receiver, "/redirect", ["task.cancelled"])
    dead = api.post("/webhooks", token=alice_t, json={"url": f"http://127.0.0.1:{free_port()}/gone",
                                                      "events": ["task.cancelled"]}).json()
    cancel(api, alice_t, submit(api, alice_t))
    once = dataclasses.replace(settings, webhook_max_attempts=1)
    started = time.monotonic()
    assert Sender(once, "t1").run_once() == 4
    # /slow answers after 3 s (cut at the 0.5 s read timeout); /trickle sends a byte every 0.2 s
    # for 17 s (cut at the attempt's 1.5 s limit)
    assert time.monotonic() - started < 2.5
    [timed_out] = deliveries(api, alice_t, slow["id"])
    assert timed_out["status"] == "failed" and "timed out" in timed_out["last_error"]
    [cut] = deliveries(api, alice_t, trickle["id"])
    assert cut["status"] == "failed" and cut["last_error"] == "no complete answer within 1.5s (timed out)"
    [nobody] = deliveries(api, alice_t, dead["id"])
    assert nobody["status"] == "failed" and "could not connect to 127.0.0.1" in nobody["last_error"]
    [redirected] = deliveries(api, alice_t, moved["id"])
    assert redirected["status"] == "failed" and redirected["last_status_code"] == 302
    assert "redirects are not followed" in redirected["last_error"] and receiver.at("/ok") == []
    # made while loopback was allowed; sent by a process whose rule says public addresses only
    ok = hook(api, alice_t, receiver, "/ok", ["task.cancelled"])
    assert api.post(f"/webhooks/{ok['id']}/test", token=alice_t).status_code == 202
    strict = dataclasses.replace(once, webhook_allow="")
    assert Sender(strict, "t2").run_once() == 1
    [refused] = deliveries(api, alice_t, ok["id"])
    assert refused["status"] == "failed" and refused["last_status_code"] is None
    assert "refused: address 127.0.0.1" in refused["last_error"] and "webhook_allow" in refused["last_error"]
    # a webhook disabled after its event: the pending delivery fails at once, unsent
    assert api.post(f"/webhooks/{ok['id']}/test", token=alice_t).status_code == 202
    assert api.patch(f"/webhooks/{ok['id']}", token=alice_t, json={"enabled": False}).status_code == 200
    assert Sender(settings, "t3").run_once() == 1
    off = deliveries(api, alice_t, ok["id"])[0]
    assert (off["status"], off["attempts"], off["last_error"]) == ("failed", 1, "webhook disabled")
    assert receiver.at("/ok") == []


def test_template_scope_and_a_failed_schedule(api: Api, receiver: Receiver, settings: Settings) -> None:
    alice, alice_t = api.submitter("alice")
    _, bob_t = api.submitter("bob")
    made = api.post("/templates", token=alice_t, json={"name": "nightly", "spec": SHELL})
    assert made.status_code == 201, made.text
    tpl = made.json()["id"]
    # a template scope takes a template the caller sees
    assert "scope_id: template 999 not found" in error(api.post("/webhooks", token=alice_t, json={
        "url": receiver.url + "/ok", "events": ["task.cancelled"], "scope": "template", "scope_id": 999}), 422)
    assert error(api.post("/webhooks", token=bob_t, json={
        "url": receiver.url + "/ok", "events": ["task.cancelled"], "scope": "template", "scope_id": tpl}), 403)
    watch = hook(api, alice_t, receiver, "/ok", ["task.cancelled", "schedule.failed"], scope="template",
                 scope_id=tpl)
    launched = api.post(f"/templates/{tpl}/launch", token=alice_t, json={})
    assert launched.status_code == 201, launched.text
    cancel(api, alice_t, launched.json()["id"])
    cancel(api, alice_t, submit(api, alice_t))  # alice's too, not from the template
    # the template's schedule fails to fire once alice's grant is gone
    sch = api.post("/schedules", token=alice_t, json={"template": tpl, "interval": 30, "skip_if_running": False})
    assert sch.status_code == 201, sch.text
    grant = api.get("/grants", token=api.root, params={"user": alice["id"]}).json()["items"][0]
    assert api.delete(f"/grants/{grant['id']}", token=api.root).status_code == 204
    with connection():
        [fired] = schedules.fire_due(settings, now() + 60)
    assert fired.outcome == "failed"
    assert Sender(settings, "t").run_once() == 2
    got = {r.json["event"]: r.json["data"] for r in receiver.at("/ok")}  # sent in parallel: any order
    assert sorted(got) == ["schedule.failed", "task.cancelled"]
    assert got["task.cancelled"]["task"]["template"] == tpl
    assert got["task.cancelled"]["task"]["id"] == launched.json()["id"]
    assert got["schedule.failed"]["schedule"]["id"] == sch.json()["id"]
    assert "no grant" in got["schedule.failed"]["schedule"]["reason"]
    assert {d["status"] for d in deliveries(api, alice_t, watch["id"])} == {"delivered"}


def test_node_lost_reaches_its_subscribers(api: Api, receiver: Receiver, settings: Settings) -> None:
    watch = hook(api, api.root, receiver, "/ok", ["node.lost"])
    others = hook(api, api.root, receiver, "/ok", ["task.failed"])
    assert SignedNode(api, "wk1", NODES_SECRET).register().status_code in (200, 201)
    with connection():
        assert lost_nodes(settings, now() + settings.node_lease + 5) == ["wk1"]
    assert Sender(settings, "t").run_once() == 1
    [lost] = deliveries(api, api.root, watch["id"])
    assert lost["status"] == "delivered" and lost["event"] == "node.lost"
    body = receiver.at("/ok")[0]
    assert body.verified == "ok" and body.json["data"]["node"]["name"] == "wk1"
    assert deliveries(api, api.root, others["id"]) == []


def test_an_event_is_queued_with_its_change_or_not_at_all(api: Api, receiver: Receiver) -> None:
    hook(api, api.root, receiver, "/ok", ["task.cancelled"])
    tid = submit(api, api.root)
    with connection():
        with pytest.raises(RuntimeError), write_transaction():
            assert states.transition(tid, "cancelled", "cancelled by a test")
            assert WebhookDelivery.select().count() == 1  # written with the state change...
            raise RuntimeError("the change is rolled back")
        assert WebhookDelivery.select().count() == 0  # ...and gone with it
        assert states.transition(tid, "cancelled", "cancelled by a test")
        assert WebhookDelivery.select().count() == 1


def test_the_pruner_drops_old_finished_deliveries_only(api: Api, receiver: Receiver, settings: Settings) -> None:
    made = hook(api, api.root, receiver, "/ok", ["task.cancelled"])
    for _ in range(3):
        assert api.post(f"/webhooks/{made['id']}/test", token=api.root).status_code == 202
    old = now() - (settings.retention_tasks_days + 1) * 86400
    with connection():
        first, second, third = (d.id for d in WebhookDelivery.select().order_by(WebhookDelivery.id))
        WebhookDelivery.update(status="delivered", created_at=old).where(WebhookDelivery.id == first).execute()
        WebhookDelivery.update(created_at=old).where(WebhookDelivery.id == second).execute()  # still pending
        WebhookDelivery.update(status="failed").where(WebhookDelivery.id == third).execute()  # recent
        assert retention.prune(settings).counts["webhook_deliveries"] == 1
    assert [d["id"] for d in deliveries(api, api.root, made["id"])] == [third, second]


def test_zonefarm_api_workers_send_each_delivery_once(tmp_path: Path, receiver: Receiver) -> None:
    """The real command: each gunicorn worker runs a sender; two share the outbox (SQLite)."""
    env = api_env(tmp_path, ZONEFARM_ROOT_SECRET=ROOT_SECRET, ZONEFARM_NODES_SECRET=NODES_SECRET,
                  ZONEFARM_API_WORKERS="2", ZONEFARM_WEBHOOK_ALLOW="127.0.0.0/8",
                  ZONEFARM_WEBHOOK_POLL_INTERVAL="0.05")
    subprocess.run([ZONEFARM, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    port = free_port()
    server = ApiProcess(["api"], {**env, "ZONEFARM_LISTEN": f"127.0.0.1:{port}"}, tmp_path / "api.log", port)
    try:
        server.wait_ready()
        api = Api(server.url.removesuffix("/api/v1"), ROOT_SECRET)
        made = hook(api, api.root, receiver, "/ok", ["task.cancelled"])
        for _ in range(6):
            assert api.post(f"/webhooks/{made['id']}/test", token=api.root).status_code == 202
        log = settled(api, api.root, made["id"], 6)
    finally:
        server.stop()
    assert {(d["status"], d["attempts"]) for d in log} == {("delivered", 1)}
    got = receiver.at("/ok")
    assert sorted(int(r.headers["X-Zonefarm-Delivery"]) for r in got) == sorted(d["id"] for d in log)
    assert {r.verified for r in got} == {"ok"}
    # the secret is derived, never stored: not in the API's output, nor in its database or data dir
    read = assert_no_secrets(files_under(tmp_path / "api.log", tmp_path / "data"), {"webhook secret": made["secret"]})
    assert read >= 2 and (tmp_path / "data" / "zonefarm.db").is_file()


# --- the parts on their own -------------------------------------------------------------


def test_scopes_match_their_subjects() -> None:
    """The scope half of who receives an event (the visibility half needs the database: above)."""
    alice_task = Subject(owner=3, space=None)
    in_space = Subject(owner=4, space=9)
    launched = Subject(owner=4, space=None, template=5)
    for scope, scope_id, owner, matches in (
            ("own", None, 3, [alice_task]), ("space", 9, 3, [in_space]), ("template", 5, 3, [launched]),
            ("all", None, None, [alice_task, in_space, launched]), ("own", None, None, [])):
        hook_row = Webhook(scope=scope, scope_id=scope_id, owner=owner)
        assert [s for s in (alice_task, in_space, launched) if events._in_scope(hook_row, s)] == matches, scope


def test_the_one_signing_helper_signs_timestamp_dot_body() -> None:
    headers = sign_payload("k" * 64, b'{"a":1}', timestamp=1700000000)
    assert headers["X-Zonefarm-Timestamp"] == "1700000000"
    assert headers["X-Zonefarm-Signature"] == "sha256=" + payload_signature("k" * 64, "1700000000", b'{"a":1}')
    import hashlib
    import hmac
    assert headers["X-Zonefarm-Signature"][7:] == hmac.new(b"k" * 64, b'1700000000.{"a":1}',
                                                           hashlib.sha256).hexdigest()
    verify_payload("k" * 64, headers, b'{"a":1}', now=1700000100)
    with pytest.raises(ValueError, match="missing"):
        verify_payload("k" * 64, {}, b"")


def test_https_goes_to_the_checked_address_and_verifies_the_urls_name(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    base = Settings(root_secret="r" * 32, webhook_allow="127.0.0.0/8 ::1", webhook_timeout=2,
                    webhook_ca_file=str(tmp_path / "ca.pem"))
    with receiving(server) as rec:
        port = rec.url.rsplit(":", 1)[1]
        by_name = Webhook(id=7, url=f"https://localhost:{port}/ok", secret_generation=0)
        rec.secrets[7] = service.secret(base, by_name)
        test = WebhookDelivery(id=9, webhook=by_name, event="webhook.test", payload={"test": True}, created_at=now())
        # connected to the address checked (127.0.0.1); SNI, Host and the certificate check use the name
        assert attempt(base, by_name, test) == Outcome(200, "")
        [got] = rec.at("/ok")
        assert got.verified == "ok" and got.headers["Host"] == f"localhost:{port}"
        # the certificate names localhost: by address, or without the CA, TLS refuses before anything is sent
        by_address = Webhook(id=8, url=f"https://127.0.0.1:{port}/ok", secret_generation=0)
        assert "TLS failed with 127.0.0.1" in attempt(base, by_address, test).error
        unknown_ca = dataclasses.replace(base, webhook_ca_file="")
        assert "TLS failed" in attempt(unknown_ca, by_name, test).error
        assert len(rec.at("/ok")) == 1


def test_a_name_with_several_addresses_is_tried_in_turn(receiver: Receiver,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS is the one thing mocked: a name with two addresses, the first refusing connections
    (127.0.0.2: loopback, where nothing listens), the second the receiver's."""
    port = int(receiver.url.rsplit(":", 1)[1])
    answers = [ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("127.0.0.1")]
    monkeypatch.setattr(egress, "resolve", lambda host, _port: answers)
    settings = Settings(root_secret="r" * 32, webhook_allow="127.0.0.0/8", webhook_timeout=2)
    two = Webhook(id=3, url=f"http://hooks.example.org:{port}/ok", secret_generation=0)
    receiver.secrets[3] = service.secret(settings, two)
    test = WebhookDelivery(id=4, webhook=two, event="webhook.test", payload={}, created_at=now())
    assert attempt(settings, two, test) == Outcome(200, "")
    [got] = receiver.at("/ok")
    assert got.verified == "ok" and got.headers["Host"] == f"hooks.example.org:{port}"
    # every address is checked before any is tried: one internal address refuses the name
    answers.insert(0, ipaddress.ip_address("10.9.9.9"))
    refused = attempt(settings, two, test)
    assert refused.error.startswith("refused: address 10.9.9.9 of hooks.example.org is private")
    assert len(receiver.at("/ok")) == 1


def test_egress_rule_checks_every_resolved_address() -> None:
    # "localhost" is a name: it is resolved, and its loopback address refused unless allowed
    with pytest.raises(PermissionError, match="of localhost is loopback.*webhook_allow"):
        pick_address(Allow(), "localhost", 80)
    assert str(pick_address(parse_allow("127.0.0.0/8 ::1"), "localhost", 80)) in ("127.0.0.1", "::1")
    assert str(pick_address(parse_allow("localhost"), "localhost", 80)) in ("127.0.0.1", "::1")
    assert str(pick_address(Allow(), "93.184.215.14", 80)) == "93.184.215.14"
    with pytest.raises(PermissionError, match="unspecified"):
        pick_address(parse_allow("::/0"), "::", 80)
    with pytest.raises(PermissionError, match="private"):
        pick_address(Allow(), "::ffff:10.0.0.1", 80)
    allow = parse_allow("10.0.0.0/8, *.corp.example hooks.example.org")
    assert allow.allows_name("a.b.corp.example") and allow.allows_name("HOOKS.example.org.")
    assert not allow.allows_name("corp.example.evil") and not allow.allows_name("evilhooks.example.org")
    with pytest.raises(ValueError, match="neither a CIDR"):
        parse_allow("10.0.0.0/8 http://x")

"""The dashboard without a browser, on both databases: sessions, cookie flags, CSRF, access
through the API's checks, the submit form's field errors, pagination, and the API routes
the dashboard added (``GET /queues``, ``POST /auth/root-token``, the task list's owner and
time filters). Each test talks HTTP to the real app on loopback, as a browser would.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from control.core.db import connection, write_transaction
from control.farm.models import Task
from control.registry import feed
from control.web.dashboard.inproc import InProcessApi
from control.web.dashboard.views import GROUP_CARDS
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.client import Api
from tests.support.dashboard import Visitor, csrf_of
from tests.support.nodes import SignedNode
from tests.support.server import LiveServer

SHELL = {"name": "shell", "params": {"argv": ["echo", "hi"]}}


@pytest.fixture
def site(live_server: LiveServer) -> str:
    return live_server.url


def visitor(site: str, api: Api, username: str) -> Visitor:
    api.grant(user=api.make_user(username)["id"])  # submitting is a grant
    v = Visitor(site)
    v.login(username)
    return v


def submit(api: Api, token: str, **body: object) -> dict:
    resp = api.post("/tasks", token=token, json={**SHELL, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_pages_need_a_session(site: str) -> None:
    v = Visitor(site)
    for path in ("/tasks", "/tasks/1", "/submit", "/nodes", "/queues", "/registry/users", "/changes", "/templates",
                 "/schedules", "/webhooks", "/templates/1"):
        resp = v.get(path)
        assert resp.status_code == 303, path
        assert resp.headers["Location"].endswith("/login?next=" + path), resp.headers["Location"]
    live = v.get("/tasks/live", headers={"HX-Request": "true"})
    assert live.status_code == 204 and live.headers["HX-Redirect"] == "/login"


def test_session_cookie_flags(site: str, api: Api) -> None:
    api.make_user("alice")
    v = Visitor(site)
    token = csrf_of(v.get("/login").text)
    resp = v.post("/login", {"csrf": token, "username": "alice", "password": "password123", "next": "/nodes"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/nodes")
    cookies = [c for c in resp.raw.headers.getlist("Set-Cookie") if c.startswith(("zf_session=", "zf_who="))]
    assert len(cookies) == 2
    for cookie in cookies:
        flags = [p.strip().lower() for p in cookie.split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
        assert "secure" not in flags  # plain HTTP here
    # behind a TLS-terminating proxy the cookie is Secure
    v2 = Visitor(site)
    token = csrf_of(v2.get("/login").text)
    resp = v2.post("/login", {"csrf": token, "username": "alice", "password": "password123"},
                   headers={"X-Forwarded-Proto": "https"})
    session = next(c for c in resp.raw.headers.getlist("Set-Cookie") if c.startswith("zf_session="))
    assert "secure" in [p.strip().lower() for p in session.split(";")]
    page = v.get("/tasks")
    assert page.status_code == 200 and "alice" in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("target", ["//evil.example/", "/\t/evil.example", "/\\evil.example",
                                    "https://evil.example/", "javascript:alert(1)"])
def test_login_never_redirects_off_the_site(site: str, api: Api, target: str) -> None:
    api.make_user("alice")
    v = Visitor(site)
    token = csrf_of(v.get("/login").text)
    resp = v.post("/login", {"csrf": token, "username": "alice", "password": "password123", "next": target})
    assert resp.status_code == 303 and resp.headers["Location"] == site + "/tasks"


def test_wrong_password_and_tampered_cookie(site: str, api: Api) -> None:
    api.make_user("alice")
    v = Visitor(site)
    token = csrf_of(v.get("/login").text)
    resp = v.post("/login", {"csrf": token, "username": "alice", "password": "wrong-password"})
    assert resp.status_code == 401 and "invalid username or password" in resp.text
    assert "zf_session" not in v.http.cookies
    v.login("alice")
    # the display cookie is signed and bound to the token: editing it ends the session
    who = v.http.cookies["zf_who"]
    v.http.cookies.set("zf_who", who.replace("user:alice", "root:alice"))
    assert v.get("/tasks").status_code == 303


def test_logout_revokes_the_token(site: str, api: Api) -> None:
    alice = api.make_user("alice")
    tokens = f"/users/{alice['id']}/tokens"
    before = {t["id"] for t in api.get(tokens, token=api.root).json()["items"]}
    v = Visitor(site)
    v.login("alice")
    token = v.token
    assert api.get("/tasks", token=token).status_code == 200
    # the login made one live token, an access token: no refresh token that logout could not revoke
    made = [t for t in api.get(tokens, token=api.root).json()["items"] if t["id"] not in before]
    assert [t["kind"] for t in made] == ["access"], made
    csrf = v.csrf()
    resp = v.post("/logout", {"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/login")
    assert api.get("/tasks", token=token).status_code == 401
    assert v.get("/tasks").status_code == 303
    live = {t["id"] for t in api.get(tokens, token=api.root).json()["items"]}
    assert live <= before, "a token from the dashboard's login outlived its logout"


def test_forms_without_a_valid_csrf_token_are_refused(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    bob = visitor(site, api, "bob")
    task = submit(api, alice.token)
    for data in ({}, {"csrf": ""}, {"csrf": bob.csrf()}, {"csrf": "0" * 64}):
        resp = alice.post(f"/tasks/{task['id']}/cancel", data)
        assert resp.status_code == 403 and "CSRF" in resp.text
        resp = alice.post("/submit", {**data, "type": "shell", "p.argv": "true"})
        assert resp.status_code == 403
    assert api.get(f"/tasks/{task['id']}", token=api.root).json()["state"] == "queued"
    assert api.get("/tasks", token=api.root).json()["total"] == 1
    # logout too: a cross-site page cannot log the visitor out
    assert alice.post("/logout", {}).status_code == 403
    assert api.get("/tasks", token=alice.token).status_code == 200
    # and the login form, whose token is bound to a cookie set with the form
    fresh = Visitor(site)
    fresh.get("/login")
    resp = fresh.post("/login", {"csrf": alice.csrf(), "username": "alice", "password": "password123"})
    assert resp.status_code == 403 and "zf_session" not in fresh.http.cookies
    # the right token works
    ok = alice.post(f"/tasks/{task['id']}/cancel", {"csrf": alice.csrf()})
    assert ok.status_code == 303
    assert api.get(f"/tasks/{task['id']}", token=api.root).json()["state"] == "cancelled"


def test_a_user_cannot_see_another_users_task_through_the_dashboard(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    bob = visitor(site, api, "bob")
    resp = bob.post("/submit", {"csrf": bob.csrf(), "type": "shell", "p.argv": "echo\nsecret-of-bob",
                                "queue": "default", "target_kind": "any", "priority": "0",
                                "timeout": "3600", "max_attempts": "3"})
    assert resp.status_code == 303, resp.text
    task_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    mine = submit(api, alice.token)

    page = alice.get(f"/tasks/{task_id}")
    assert page.status_code == 403
    assert "secret-of-bob" not in page.text and "only the submitter" in page.text
    for path in (f"/tasks/{task_id}/live?offset=0",):
        live = alice.get(path, headers={"HX-Request": "true"})
        assert live.status_code == 204 and "secret-of-bob" not in live.text
    listing = alice.get("/tasks")
    assert f'data-task="{mine["id"]}"' in listing.text and f'data-task="{task_id}"' not in listing.text
    assert alice.post(f"/tasks/{task_id}/cancel", {"csrf": alice.csrf()}).status_code == 403
    assert alice.post(f"/tasks/{task_id}/resubmit", {"csrf": alice.csrf()}).status_code == 403
    assert api.get(f"/tasks/{task_id}", token=api.root).json()["state"] == "queued"
    # bob and root see it
    assert "secret-of-bob" in bob.get(f"/tasks/{task_id}").text
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    assert "secret-of-bob" in root.get(f"/tasks/{task_id}").text


def test_node_actions_are_the_administrators(site: str, api: Api) -> None:
    node = SignedNode(api, "wk1", NODES_SECRET)
    assert node.register().status_code in (200, 201)
    alice = visitor(site, api, "alice")
    page = alice.get("/nodes")
    assert 'data-node="wk1"' in page.text and "cordon-wk1" not in page.text
    assert alice.post("/nodes/wk1/cordon", {"csrf": alice.csrf()}).status_code == 403
    assert api.get("/nodes/wk1", token=api.root).json()["cordoned"] is False
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    assert 'id="cordon-wk1"' in root.get("/nodes").text
    resp = root.post("/nodes/wk1/cordon", {"csrf": root.csrf()})
    assert resp.status_code == 303
    assert api.get("/nodes/wk1", token=api.root).json()["cordoned"] is True
    assert 'data-flag="cordoned"' in root.get("/nodes").text
    assert root.post("/nodes/wk1/uncordon", {"csrf": root.csrf()}).status_code == 303
    assert api.get("/nodes/wk1", token=api.root).json()["cordoned"] is False
    assert alice.post("/nodes/wk1/drain", {"csrf": alice.csrf()}).status_code == 403
    assert api.get("/nodes/wk1", token=api.root).json()["draining"] is False
    assert 'id="drain-wk1"' in root.get("/nodes").text
    resp = root.post("/nodes/wk1/drain", {"csrf": root.csrf()})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/nodes")
    drained = api.get("/nodes/wk1", token=api.root).json()
    assert drained["draining"] is True and drained["cordoned"] is True
    assert "Node wk1 draining." in root.get("/nodes").text  # the flash, once
    assert root.post("/nodes/wk1/explode", {"csrf": root.csrf()}).status_code == 404


def test_submit_form_reports_field_errors(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    form = alice.get("/submit?type=shell").text
    assert 'value="shell"' in form and 'value="transfer"' not in form  # the zone's own type is not offered
    assert 'value="transfer"' not in alice.get("/submit?type=transfer").text
    for name in ("p.argv", "p.env", "p.cwd", "queue", "target_kind", "priority", "timeout", "max_attempts"):
        field_id = re.search(rf'id="([^"]+)" name="{re.escape(name)}"', form)
        assert field_id, name
        assert f'<label for="{field_id.group(1)}"' in form, f"{name} has no label"
    resp = alice.post("/submit", {"csrf": csrf_of(form), "type": "shell", "p.argv": "", "p.env": "NOT A PAIR",
                                  "queue": "bad queue!", "target_kind": "any", "priority": "5000",
                                  "timeout": "soon", "max_attempts": "3"})
    assert resp.status_code == 422
    html = resp.text
    assert re.search(r'id="f-argv-error">required<', html)
    assert re.search(r'id="f-env-error">line 1: expected KEY=value<', html)
    assert 'id="c-queue-error"' in html and 'id="c-priority-error"' in html
    assert re.search(r'id="c-timeout-error">must be a whole number<', html)
    assert 'aria-invalid="true"' in html and "NOT A PAIR" in html  # the values are kept
    assert api.get("/tasks", token=api.root).json()["total"] == 0
    # an env name the schema refuses: the schema's own message, on the field
    resp = alice.post("/submit", {"csrf": csrf_of(form), "type": "shell", "p.argv": "true", "p.env": "1X=y",
                                  "target_kind": "any"})
    assert resp.status_code == 422 and 'id="f-env-error"' in resp.text
    # a space the user is not in: the API's refusal, shown on the field
    space = api.post("/spaces", token=api.root, json={"name": "private"}).json()
    resp = alice.post("/submit", {"csrf": csrf_of(form), "type": "shell", "p.argv": "true", "target_kind": "any",
                                  "space": str(space["id"])})
    assert resp.status_code == 422 and 'id="c-space-error"' in resp.text and "not a member" in resp.text
    # a good one goes through the API and lands on the task's page
    resp = alice.post("/submit", {"csrf": csrf_of(form), "type": "shell", "p.argv": "sh\n-c\necho a b",
                                  "p.env": "GREETING=hello world", "target_kind": "any", "queue": "default"})
    assert resp.status_code == 303
    task = api.get(f"/tasks/{int(resp.headers['Location'].rsplit('/', 1)[1])}", token=api.root).json()
    assert task["params"] == {"argv": ["sh", "-c", "echo a b"], "env": {"GREETING": "hello world"}}
    assert task["owner"] is not None


def test_resubmit_a_finished_task_with_the_same_params(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    task = submit(api, alice.token, params={"argv": ["echo", "again"]}, priority=7, queue="q1")
    assert alice.post(f"/tasks/{task['id']}/resubmit", {"csrf": alice.csrf()}).status_code == 303
    assert api.get("/tasks", token=api.root).json()["total"] == 1  # still queued: not resubmitted
    api.post(f"/tasks/{task['id']}/cancel", token=alice.token)
    resp = alice.post(f"/tasks/{task['id']}/resubmit", {"csrf": alice.csrf()})
    assert resp.status_code == 303
    new_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    new = api.get(f"/tasks/{new_id}", token=api.root).json()
    assert new_id != task["id"] and new["params"] == {"argv": ["echo", "again"]}
    assert new["priority"] == 7 and new["queue"] == "q1" and new["owner"] == task["owner"]


def test_tasks_page_paginates_filters_and_counts(site: str, api: Api, live_server: LiveServer) -> None:
    alice = visitor(site, api, "alice")
    for i in range(60):
        submit(api, alice.token if i % 2 else api.root, queue="even" if i % 2 == 0 else "odd")
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    page = root.get("/tasks")
    assert page.text.count('data-task="') == 50 and "1–50 of 60" in page.text
    assert 'rel="next"' in page.text
    second = root.get("/tasks?offset=50")
    assert second.text.count('data-task="') == 10 and 'rel="prev"' in second.text
    assert re.search(r'id="count-queued".*?<span class="count">60<', page.text, re.S)
    odd = root.get("/tasks?queue=odd&owner=alice")
    assert odd.text.count('data-task="') == 30
    # node: the tasks last run on wk1 (a lost attempt's node), type: the API's name filter
    with connection():
        ids = [t.id for t in Task.select(Task.id).order_by(Task.id).limit(3)]
        Task.update(last_node="wk1").where(Task.id.in_(ids)).execute()
    on_wk1 = root.get("/tasks?node=wk1").text
    assert sorted(int(n) for n in re.findall(r'data-task="(\d+)"', on_wk1)) == ids
    assert root.get("/tasks?node=wk2").text.count('data-task="') == 0
    boxed = submit(api, api.root, name="container", params={"image": "busybox"})
    typed = root.get("/tasks?type=container").text
    assert re.findall(r'data-task="(\d+)"', typed) == [str(boxed["id"])]
    assert re.search(r'id="count-queued".*?<span class="count">1<', typed, re.S)  # counts filtered alike
    assert root.get("/tasks?type=shell&node=wk1").text.count('data-task="') == 3
    assert root.get("/tasks?owner=nobody").text.count('data-task="') == 0
    assert "No user named" in root.get("/tasks?owner=nobody").text
    # time filters go to the API's created_after / created_before
    assert root.get("/tasks?within=1h").text.count('data-task="') == 50
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert root.get(f"/tasks?after={future}").text.count('data-task="') == 0
    assert root.get(f"/tasks?before={future}").text.count('data-task="') == 50
    # the live fragment answers 204 while nothing changed, the new version when something did
    live = root.get("/tasks/live?queue=odd", headers={"HX-Request": "true"})
    assert live.status_code == 200
    version = re.search(r'hx-get="/tasks/live\?queue=odd&amp;v=([0-9a-f]+)"', live.text).group(1)
    same = root.get(f"/tasks/live?queue=odd&v={version}", headers={"HX-Request": "true"})
    assert same.status_code == 204
    submit(api, api.root, queue="odd")
    moved = root.get(f"/tasks/live?queue=odd&v={version}", headers={"HX-Request": "true"})
    assert moved.status_code == 200 and moved.text.count('data-task="') == 31


def test_task_page_shows_why_a_queued_task_waits(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    task = submit(api, alice.token, queue="gpu")
    page = alice.get(f"/tasks/{task['id']}")
    assert page.status_code == 200
    assert 'class="blockers"' in page.text and "no node serves queue &#39;gpu&#39;" in page.text


def test_every_page_renders_for_root_and_user(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    node = SignedNode(api, "wk1", NODES_SECRET)
    node.register(queues=["default", "gpu"], resources={"cpu": 4, "memory": 8 * 2**30})
    group = api.post("/groups", token=alice.token, json={"name": "physics"}).json()
    child = api.post("/groups", token=alice.token, json={"name": "optics"}).json()
    api.put(f"/groups/{group['id']}/children/{child['id']}", token=alice.token)
    api.post("/spaces", token=alice.token, json={"name": "climate"})
    task = submit(api, alice.token)
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    for v in (alice, root):
        for path in ("/tasks", f"/tasks/{task['id']}", "/submit", "/submit?type=pipeline", "/nodes", "/queues",
                     "/templates", "/schedules", "/webhooks",
                     "/registry/users", "/registry/groups", "/registry/spaces", "/registry/providers", "/changes"):
            resp = v.get(path)
            assert resp.status_code == 200, (path, resp.text[:500])
            assert "<script" not in resp.text.replace('<script src="/static/', "")  # no inline or remote script
            assert not re.search(r'(src|href)="(https?:)?//', resp.text), path  # nothing from another site
    assert "optics" in alice.get("/registry/groups").text
    assert "8.0 GiB" in root.get("/nodes").text
    queues = root.get("/queues").text
    assert 'data-queue="gpu"' in queues and 'data-queue="default"' in queues
    assert root.get("/changes").text.count("data-seq=") >= 4
    assert root.get("/registry/nope").status_code == 404
    missing = root.get("/no/such/page")
    assert missing.status_code == 404 and "text/html" in missing.headers["Content-Type"]
    # the API keeps its JSON errors
    assert api.get("/no-such-thing", token=api.root).headers["Content-Type"].startswith("application/json")
    js = Visitor(site).get("/static/htmx.min.js")
    assert js.status_code == 200 and "htmx" in js.text[:2000]
    assert Visitor(site).get("/static/htmx.LICENSE.txt").status_code == 200
    assert Visitor(site).get("/static/../views.py").status_code in (403, 404)


def test_registry_groups_page_is_a_few_reads_per_card(site: str, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six nested groups g0 > g1 > ... > g5, alice in g5: a page shows GROUP_CARDS of them, and
    names the groups of a member's chain that are off the page from one read, not one each:
    the page is one list, two reads per card and at most one for names (its 300 ms budget)."""
    alice = api.make_user("alice")
    bob = api.make_user("bob")
    ids = [api.post("/groups", token=api.root, json={"name": f"g{i}"}).json()["id"] for i in range(6)]
    for parent, child in zip(ids, ids[1:], strict=False):
        assert api.put(f"/groups/{parent}/children/{child}", token=api.root).status_code == 201
    api.put(f"/groups/{ids[5]}/users/{alice['id']}", token=api.root, json={"role": "member"})
    api.put(f"/groups/{ids[0]}/users/{bob['id']}", token=api.root, json={"role": "member"})
    reads: list[str] = []
    real_call = InProcessApi.call

    def counted(self: InProcessApi, method: str, path: str, *args: object, **kw: object) -> object:
        reads.append(path)
        return real_call(self, method, path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(InProcessApi, "call", counted)
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    reads.clear()
    page = root.get("/registry/groups").text
    cards = re.findall(r'<section class="card entity" id="group-(\d+)"', page)
    assert cards == [str(g) for g in ids[:GROUP_CARDS]]
    assert len(reads) == 1 + 2 * GROUP_CARDS + 1, reads
    top = page[page.index(f'id="group-{ids[0]}"'):page.index(f'id="group-{ids[1]}"')]
    assert "alice" in top and "via g1 › g2 › g3 › g4 › g5" in top  # g4 and g5 are on the next page
    assert 'href="/registry/groups?offset=4"' in page
    rest = root.get("/registry/groups?offset=4").text
    assert re.findall(r'<section class="card entity" id="group-(\d+)"', rest) == [str(g) for g in ids[4:]]
    # bob, in g0 only, sees g0's members and its child g1 (the children read names it), not
    # the names of the groups further down
    v = Visitor(site)
    v.login("bob")
    reads.clear()
    mine = v.get("/registry/groups").text
    assert re.findall(r'<section class="card entity" id="group-(\d+)"', mine) == [str(ids[0])]
    assert "alice" in mine and f"via g1 › #{ids[2]} › #{ids[3]}" in mine and "g2" not in mine
    assert len(reads) == 1 + 2 + 1, reads


def test_changes_page_starts_at_the_head_of_a_long_feed(site: str, api: Api) -> None:
    with connection(), write_transaction():  # a long feed, quickly: the changes alone
        for n in range(1, 1301):
            feed.record("user", 1000 + n, "update", {"n": n}, user_id=1000 + n)
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    page = root.get("/changes").text
    shown = [int(n) for n in re.findall(r'data-seq="(\d+)"', page)]
    assert shown == list(range(1300, 1200, -1))  # the newest 100, newest first, live
    assert 'hx-get="/changes/live?since=1200' in page and 'href="/changes?since=1100"' in page
    older = root.get("/changes?since=1100").text  # a page of history
    assert [int(n) for n in re.findall(r'data-seq="(\d+)"', older)] == list(range(1200, 1100, -1))
    assert 'href="/changes?since=1000"' in older and 'href="/changes?since=1200"' in older
    assert "hx-get" not in older
    alice = visitor(site, api, "alice")  # a user sees her own changes, not the others'
    assert re.findall(r'data-seq="(\d+)"', alice.get("/changes").text) == ["1301"]


def test_root_token_route(api: Api) -> None:
    resp = api.post("/auth/root-token", token=api.root)
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    token = resp.json()["access_token"]
    assert token != ROOT_SECRET and resp.json()["expires_in"] > 0
    created = api.post("/users", token=token, json={"username": "made-by-root-token", "password": "password123"})
    assert created.status_code == 201
    assert api.post("/auth/root-token", token=token).status_code == 403  # a token cannot extend itself
    _, user_token = api.user_with_token("alice")
    assert api.post("/auth/root-token", token=user_token).status_code == 403
    assert api.delete("/auth/token", token=token).status_code == 204
    assert api.get("/users", token=token).status_code == 401


def test_task_list_owner_and_time_filters(api: Api) -> None:
    alice, alice_token = api.submitter("alice")
    bob, bob_token = api.submitter("bob")
    first = submit(api, alice_token)
    submit(api, bob_token)
    with connection():  # an old task: a day ago
        Task.update(created_at=time.time() - 86400).where(Task.id == first["id"]).execute()
    assert [t["id"] for t in api.get("/tasks", token=api.root, params={"owner": alice["id"]}).json()["items"]] \
        == [first["id"]]
    assert api.get("/tasks", token=alice_token, params={"owner": bob["id"]}).json()["total"] == 0  # not hers
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    recent = api.get("/tasks", token=api.root, params={"created_after": hour_ago}).json()
    assert recent["total"] == 1 and recent["items"][0]["owner"] == bob["id"]
    old = api.get("/tasks", token=api.root, params={"created_before": hour_ago.replace("+00:00", "Z")}).json()
    assert [t["id"] for t in old["items"]] == [first["id"]]
    # No offset: ambiguous (whose local time?), so refused by name rather than guessed; the
    # dashboard's form adds UTC itself before it asks.
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    vague = api.get("/tasks", token=api.root, params={"created_after": naive.isoformat()})
    assert vague.status_code == 422 and "created_after" in vague.json()["error"]["message"]
    bad = api.get("/tasks", token=api.root, params={"created_after": "yesterday"})
    assert bad.status_code == 422 and "created_after" in bad.json()["error"]["message"]


def test_task_counts_route(api: Api) -> None:
    alice, alice_token = api.submitter("alice")
    _, bob_token = api.submitter("bob")
    for queue in ("a", "a", "b"):
        submit(api, alice_token, queue=queue)
    cancelled = submit(api, bob_token, queue="a")
    api.post(f"/tasks/{cancelled['id']}/cancel", token=bob_token)
    everything = api.get("/tasks/counts", token=api.root).json()
    assert everything["total"] == 4 and everything["counts"]["queued"] == 3
    assert everything["counts"]["cancelled"] == 1 and set(everything["counts"]) >= {"running", "succeeded", "lost"}
    assert api.get("/tasks/counts", token=api.root, params={"queue": "a"}).json()["counts"]["queued"] == 2
    assert api.get("/tasks/counts", token=api.root, params={"owner": alice["id"]}).json()["total"] == 3
    hers = api.get("/tasks/counts", token=alice_token).json()  # only what she may see
    assert hers["total"] == 3 and hers["counts"]["cancelled"] == 0
    assert api.get("/tasks/counts").status_code == 401


def test_queues_route(api: Api) -> None:
    _, token = api.submitter("alice")
    wk1 = SignedNode(api, "wk1", NODES_SECRET)
    wk1.register(queues=["default", "gpu"])
    wk2 = SignedNode(api, "wk2", NODES_SECRET)
    wk2.register(queues=["default"])
    api.post("/nodes/wk2/cordon", token=api.root)
    for queue in ("default", "default", "orphan"):
        submit(api, token, queue=queue)
    with connection():
        oldest = Task.select().where(Task.queue == "default").order_by(Task.id).first()
        Task.update(created_at=time.time() - 120).where(Task.id == oldest.id).execute()
    resp = api.get("/queues", token=token)
    assert resp.status_code == 200
    queues = {q["name"]: q for q in resp.json()["items"]}
    assert set(queues) == {"default", "gpu", "orphan"}
    assert queues["default"]["queued"] == 2 and queues["default"]["running"] == 0
    assert queues["default"]["nodes"] == ["wk1", "wk2"] and queues["default"]["nodes_available"] == 1
    assert 119 <= queues["default"]["oldest_queued_age"] < 200
    assert queues["orphan"]["nodes"] == [] and queues["orphan"]["queued"] == 1
    assert queues["gpu"]["queued"] == 0 and queues["gpu"]["oldest_queued_age"] is None
    assert api.get("/queues", token=token, params={"name": "orph"}).json()["total"] == 1
    assert api.get("/queues").status_code == 401


def test_template_pages_show_versions_and_launch_with_overrides(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    token = api.login("alice")
    made = api.post("/templates", token=token, json={"name": "nightly", "spec": {**SHELL, "priority": 3}}).json()
    api.patch(f"/templates/{made['id']}", token=token,
              json={"spec": {"name": "shell", "params": {"argv": ["echo", "v2"]}, "queue": "night"}})
    visitor(site, api, "bob")
    bob_token = api.login("bob")
    theirs = api.post("/templates", token=bob_token, json={"name": "bobs-own", "spec": SHELL}).json()

    listing = alice.get("/templates").text
    assert f'data-template="{made["id"]}"' in listing and "bobs-own" not in listing and "v2" in listing
    page = alice.get(f"/templates/{made['id']}")
    assert page.status_code == 200 and 'data-version="1"' in page.text and 'data-version="2"' in page.text
    assert "v2" in page.text and "night" in page.text
    old = alice.get(f"/templates/{made['id']}?version=1").text
    assert "&#34;hi&#34;" in old and "&#34;priority&#34;: 3" in old  # the old spec, escaped JSON
    assert alice.get(f"/templates/{theirs['id']}").status_code == 403
    assert alice.get(f"/templates/{made['id']}?version=9").status_code == 404

    # a launch: blank fields keep the template's values, filled ones override
    resp = alice.post(f"/templates/{made['id']}/launch", {"csrf": alice.csrf(), "p.argv": "", "p.cwd": "/tmp",
                                                          "priority": "7", "queue": ""})
    assert resp.status_code == 303, resp.text
    task = api.get("/tasks/" + resp.headers["Location"].rsplit("/", 1)[1], token=token).json()
    assert (task["template"], task["template_version"], task["priority"], task["queue"]) == (made["id"], 2, 7, "night")
    assert task["params"] == {"argv": ["echo", "v2"], "cwd": "/tmp"}
    bad = alice.post(f"/templates/{made['id']}/launch", {"csrf": alice.csrf(), "priority": "5000"})
    assert bad.status_code == 422 and 'id="c-priority-error"' in bad.text
    assert alice.post(f"/templates/{theirs['id']}/launch", {"csrf": alice.csrf()}).status_code == 403
    assert alice.post(f"/templates/{made['id']}/launch", {"csrf": "0" * 64}).status_code == 403
    assert api.get("/tasks", token=api.root).json()["total"] == 1


def test_schedule_page_pauses_and_resumes_only_what_the_api_allows(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    token = api.login("alice")
    template = api.post("/templates", token=token, json={"name": "nightly", "spec": SHELL}).json()
    sch = api.post("/schedules", token=token, json={"template": template["id"], "cron": "0 3 * * *",
                                                    "timezone": "Europe/Paris"}).json()
    page = alice.get("/schedules").text
    assert f'data-schedule="{sch["id"]}"' in page and "0 3 * * *" in page and "Europe/Paris" in page
    assert f'id="pause-{sch["id"]}"' in page and ">nightly</a>" in page
    assert alice.post(f"/schedules/{sch['id']}/pause", {"csrf": alice.csrf()}).status_code == 303
    assert api.get(f"/schedules/{sch['id']}", token=token).json()["enabled"] is False
    paused = alice.get("/schedules").text
    assert 'data-flag="paused"' in paused and f'id="resume-{sch["id"]}"' in paused
    bob = visitor(site, api, "bob")
    assert f'data-schedule="{sch["id"]}"' not in bob.get("/schedules").text
    assert bob.post(f"/schedules/{sch['id']}/resume", {"csrf": bob.csrf()}).status_code == 403
    assert api.get(f"/schedules/{sch['id']}", token=token).json()["enabled"] is False
    assert alice.post(f"/schedules/{sch['id']}/resume", {"csrf": alice.csrf()}).status_code == 303
    assert api.get(f"/schedules/{sch['id']}", token=token).json()["next_run"] is not None
    assert alice.post(f"/schedules/{sch['id']}/explode", {"csrf": alice.csrf()}).status_code == 404


def test_webhook_page_shows_the_secret_once_and_only_the_owners_webhooks(site: str, api: Api) -> None:
    alice = visitor(site, api, "alice")
    bob = visitor(site, api, "bob")
    made = alice.post("/webhooks", {"csrf": alice.csrf("/webhooks"), "url": "https://hooks.example.org/zf",
                                    "events": ["task.failed", "node.lost"], "scope": "own",
                                    "description": "ops <b>"})
    assert made.status_code == 201, made.text
    secret = re.search(r'id="webhook-secret">([^<]+)</pre>', made.text).group(1)
    hooks = api.get("/webhooks", token=api.login("alice")).json()["items"]
    assert len(hooks) == 1 and hooks[0]["url"] == "https://hooks.example.org/zf"
    hook_id = hooks[0]["id"]
    assert "ops &lt;b&gt;" in made.text and "ops <b>" not in made.text
    again = alice.get("/webhooks").text
    assert f'data-webhook="{hook_id}"' in again and secret not in again and 'id="webhook-secret"' not in again
    assert secret not in str(alice.http.cookies.get_dict())
    # the API refuses an internal address: the form again, with its message, nothing made
    internal = alice.post("/webhooks", {"csrf": alice.csrf(), "url": "http://127.0.0.1:9/x",
                                        "events": ["task.failed"], "scope": "own"})
    assert internal.status_code == 422 and 'id="form-error"' in internal.text
    assert "http://127.0.0.1:9/x" in internal.text  # what was typed stays in the form
    # a forged scope: root's only
    assert alice.post("/webhooks", {"csrf": alice.csrf(), "url": "https://hooks.example.org/a",
                                    "events": ["task.failed"], "scope": "all"}).status_code == 403
    # another user: not listed, and 403 on every POST
    assert f'data-webhook="{hook_id}"' not in bob.get("/webhooks").text
    for action in ("test", "delete"):
        assert bob.post(f"/webhooks/{hook_id}/{action}", {"csrf": bob.csrf()}).status_code == 403
    assert api.get(f"/webhooks/{hook_id}/deliveries", token=api.root).json()["total"] == 0
    # the owner's test delivery shows in the recent deliveries, pending (no sender runs here)
    assert alice.post(f"/webhooks/{hook_id}/test", {"csrf": alice.csrf()}).status_code == 303
    page = alice.get("/webhooks").text
    assert "webhook.test" in page and "delivery-pending" in page
    root = Visitor(site)
    root.login_root(ROOT_SECRET)
    assert f'data-webhook="{hook_id}"' in root.get("/webhooks").text  # the administrator sees all
    assert alice.post(f"/webhooks/{hook_id}/delete", {"csrf": alice.csrf()}).status_code == 303
    assert api.get("/webhooks", token=api.root).json()["total"] == 0

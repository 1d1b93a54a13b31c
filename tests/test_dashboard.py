"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against
the live API with a real ``zonefarm dispatcher`` and a node on this machine.

The scenarios: log in; submit a ``shell`` task from the form; watch it go queued -> running
-> succeeded with its log appearing, without a reload; see why a task on an unserved queue
waits; cordon a node and see it; log out; an ordinary user is refused another user's task
page; a form without a CSRF token is refused. Each page is saved as a PNG under
``var/screenshots/`` (laptop width, and phone width for some) for a reviewer to look at.

SQLite only: the dashboard runs no SQL of its own (every read is an API route, which the
API tests and ``test_dashboard_api.py`` run on both databases), and a browser run is slow.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.core.config import Settings
from tests.conftest import ROOT_SECRET, farm_test_settings
from tests.support.client import Api
from tests.support.farm import ROOT, Farm
from tests.support.server import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = os.environ.get("ZONEFARM_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "var" / "screenshots"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
LEASE = 4


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh SQLite database (this module only: see the docstring)."""
    path = tmp_path / "zonefarm.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return farm_test_settings(db_url, tmp_path, LEASE)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make deps does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def contexts(browser: Any) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for ctx in made:
        ctx.close()


def new_page(browser: Any, contexts: list[Any], viewport: dict[str, int] = LAPTOP, **kw: Any) -> Any:
    ctx = browser.new_context(viewport=viewport, **kw)
    contexts.append(ctx)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page: Any, base: str, username: str, password: str = "password123") -> None:
    page.goto(base + "/tasks")
    assert page.url.startswith(base + "/login"), page.url  # no session: the login page
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()
    page.wait_for_url(base + "/tasks")


def log_in_as_root(page: Any, base: str) -> None:
    page.goto(base + "/login")
    page.locator("summary", has_text="Administrator").click()
    page.get_by_label("Root secret").fill(ROOT_SECRET)
    page.get_by_role("button", name="Log in as administrator").click()
    page.wait_for_url(base + "/tasks")


def task_id_of(page: Any) -> int:
    found = re.search(r"/tasks/(\d+)$", page.url)
    assert found, page.url
    return int(found.group(1))


def watch_states(page: Any, until: str, timeout: float = 60) -> list[str]:
    """The task states the page shows, in order, until ``until`` (read from the DOM, which
    htmx updates; the page is never reloaded)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page.locator("#task-state").get_attribute("data-state")
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == until:
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"the page never showed {until}: saw {seen}")


def test_dashboard_in_a_browser(farm: Farm, live_server: LiveServer, api: Api, browser: Any,
                                contexts: list[Any]) -> None:
    base = live_server.url
    alice = api.make_user("alice", full_name="Alice Liddell", email="alice@example.org")
    api.grant(user=alice["id"])  # submitting is a grant
    bob = api.make_user("bob")
    api.grant(user=bob["id"])
    farm.add_node("wk1", region="eu", concurrency=2)

    # log in (the login page first)
    page = new_page(browser, contexts)
    page.goto(base + "/login")
    shot(page, "login")
    log_in(page, base, "alice")
    assert page.locator(".whoami").inner_text().strip() == "alice"

    # submit a shell task from the generated form
    page.get_by_role("link", name="Submit", exact=True).click()
    page.wait_for_url(base + "/submit")
    assert page.get_by_label("Task type").input_value() == "shell"
    page.get_by_label("Argv").fill("sh\n-c\necho started; sleep 3; echo finished")
    page.get_by_label("Env").fill("GREETING=hello")
    shot(page, "submit")
    page.get_by_role("button", name="Submit", exact=True).click()
    page.wait_for_url(re.compile(r".*/tasks/\d+$"))
    task_id = task_id_of(page)
    assert api.get(f"/tasks/{task_id}", token=api.root).json()["params"] == {
        "argv": ["sh", "-c", "echo started; sleep 3; echo finished"], "env": {"GREETING": "hello"}}

    # queued (no dispatcher yet: the page says why), then running, then succeeded, no reload
    page.evaluate("window.__sameDocument = true")
    assert page.locator("#task-state").get_attribute("data-state") == "queued"
    assert "waiting for dispatcher" in page.locator(".blockers").inner_text()
    shot(page, "task-queued")
    farm.start_dispatcher("d1")
    states = watch_states(page, "running")
    page.locator("#log-text", has_text="started").wait_for()
    assert "finished" not in page.locator("#log-text").inner_text()  # the log tails while it runs
    shot(page, "task-running")
    states += watch_states(page, "succeeded")[1:]
    assert states[0] == "queued" and states[-1] == "succeeded" and "running" in states
    assert states.index("running") < states.index("succeeded")
    page.locator("#log-text", has_text="finished").wait_for()
    assert page.locator("#log-text").inner_text() == "started\nfinished\n"
    assert page.evaluate("window.__sameDocument") is True  # all of it without a reload
    page.locator("#task-history li", has_text="exit code 0").wait_for()
    page.get_by_role("button", name="Resubmit with the same params").wait_for()
    shot(page, "task")
    shot_phone(browser, contexts, page, "task-phone", f"/tasks/{task_id}")

    # a task on a queue no node serves: the page says so, prominently
    page.goto(base + "/submit")
    page.get_by_label("Argv").fill("true")
    page.get_by_label("Queue").fill("gpu")
    page.get_by_role("button", name="Submit", exact=True).click()
    page.wait_for_url(re.compile(r".*/tasks/\d+$"))
    waiting = task_id_of(page)
    blockers = page.locator(".blockers")
    assert blockers.is_visible()
    assert "no node serves queue 'gpu'" in blockers.inner_text()
    assert "no node serves queue" in blockers.locator("li").first.inner_text()
    shot(page, "task-waiting")

    # field-level errors from the server, the values kept
    page.goto(base + "/submit")
    page.get_by_label("Env").fill("NOT A PAIR")
    page.get_by_label("Priority").fill("5000")
    page.get_by_role("button", name="Submit", exact=True).click()
    assert page.locator("#f-argv-error").inner_text() == "required"
    assert "KEY=value" in page.locator("#f-env-error").inner_text()
    assert page.locator("#c-priority-error").is_visible()
    assert page.get_by_label("Env").input_value() == "NOT A PAIR"
    shot(page, "submit-errors")

    # the task list: counts per state, updated live
    page.goto(base + "/tasks")
    page.evaluate("window.__sameDocument = true")
    assert page.locator("#count-succeeded .count").inner_text() == "1"
    assert page.locator("#count-queued .count").inner_text() == "1"
    shot(page, "tasks")
    shot_phone(browser, contexts, page, "tasks-phone", "/tasks")
    api.post(f"/tasks/{waiting}/cancel", token=api.root)
    page.locator(f'tr[data-task="{waiting}"] [data-state="cancelled"]').wait_for()
    assert page.locator("#count-cancelled .count").inner_text() == "1"
    assert page.evaluate("window.__sameDocument") is True

    # an ordinary user is refused another user's task page
    bob_token = api.login("bob")
    bobs = api.post("/tasks", token=bob_token, json={"name": "shell", "params": {"argv": ["echo", "bob-only"]},
                                                    "queue": "gpu"}).json()
    resp = page.goto(base + f"/tasks/{bobs['id']}")
    assert resp.status == 403
    assert page.get_by_role("heading", name="Not allowed").is_visible()
    assert "bob-only" not in page.content()
    shot(page, "forbidden")
    page.goto(base + "/tasks")
    assert page.locator(f'tr[data-task="{bobs["id"]}"]').count() == 0

    # a form without a CSRF token is refused (the browser posts it, minus the hidden field)
    page.goto(base + "/tasks/" + str(task_id))
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    page.get_by_role("button", name="Resubmit with the same params").click()
    page.wait_for_load_state()
    assert "CSRF" in page.locator(".flash.error").inner_text()
    assert api.get("/tasks", token=api.root).json()["total"] == 3  # nothing was resubmitted

    # log out: back to the login page, and the session's token is revoked
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "zf_session")
    session_cookie = next(c for c in page.context.cookies() if c["name"] == "zf_session")
    assert session_cookie["httpOnly"] is True and session_cookie["sameSite"] == "Strict"
    page.goto(base + "/tasks")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(base + "/login")
    assert "logged out" in page.locator(".flash").inner_text()
    assert api.get("/tasks", token=token).status_code == 401
    page.goto(base + "/tasks")
    assert page.url.startswith(base + "/login")

    # root: cordon the node and see it, and every other page for the screenshots
    admin = new_page(browser, contexts)
    log_in_as_root(admin, base)
    admin.goto(base + "/nodes")
    row = admin.locator('tr[data-node="wk1"]')
    assert row.locator(".badge.node-online").is_visible()
    shot(admin, "nodes")
    row.get_by_role("button", name="Cordon").click()
    admin.wait_for_url(base + "/nodes")
    admin.locator('tr[data-node="wk1"] [data-flag="cordoned"]').wait_for()
    assert "Node wk1 cordoned" in admin.locator(".flash").inner_text()
    assert api.get("/nodes/wk1", token=api.root).json()["cordoned"] is True
    shot(admin, "nodes-cordoned")
    shot_phone(browser, contexts, admin, "nodes-phone", "/nodes")
    admin.locator('tr[data-node="wk1"]').get_by_role("button", name="Uncordon").click()
    admin.wait_for_url(base + "/nodes")
    assert api.get("/nodes/wk1", token=api.root).json()["cordoned"] is False

    _registry_fixture(api)
    for path, name in (("/queues", "queues"), ("/registry/users", "registry-users"),
                       ("/registry/groups", "registry-groups"), ("/registry/spaces", "registry-spaces"),
                       ("/registry/providers", "registry-providers"), ("/changes", "changes")):
        resp = admin.goto(base + path)
        assert resp.status == 200, path
        shot(admin, name)
        if name == "queues":  # bob's task waits on gpu, which no node serves
            assert "none" in admin.locator('tr[data-queue="gpu"]').inner_text()
    admin.goto(base + "/registry/groups")
    assert "optics" in admin.locator("#group-1").inner_text()  # a nested group's members reach the parent
    assert "alice" in admin.locator("#group-1").inner_text()
    admin.goto(base + "/changes")
    admin.evaluate("window.__sameDocument = true")
    api.post("/groups", token=api.root, json={"name": "late-arrival"})
    admin.locator("#changes-live", has_text="late-arrival").wait_for()  # the feed, live
    assert admin.evaluate("window.__sameDocument") is True

    # keyboard: the skip link comes first, then the main navigation
    admin.goto(base + "/tasks")
    admin.keyboard.press("Tab")
    assert admin.evaluate("document.activeElement.textContent") == "Skip to content"
    admin.keyboard.press("Tab")
    admin.keyboard.press("Tab")
    assert admin.evaluate("document.activeElement.textContent") == "Tasks"

    # no page shows more than it should without JavaScript: the static pages render server-side
    nojs = new_page(browser, contexts, java_script_enabled=False)
    log_in(nojs, base, "bob")
    assert nojs.locator(f'tr[data-task="{bobs["id"]}"]').count() == 1
    nojs.goto(base + f"/tasks/{bobs['id']}")
    assert "no node serves queue" in nojs.locator(".blockers").inner_text()


def shot_phone(browser: Any, contexts: list[Any], page: Any, name: str, path: str) -> None:
    """The same page at a phone's width, with the same session."""
    phone = new_page(browser, contexts, PHONE, storage_state=page.context.storage_state())
    base = re.match(r"https?://[^/]+", page.url).group(0)
    phone.goto(base + path)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] + 1, f"{path} scrolls sideways on a phone ({width}px)"
    shot(phone, name)


def _registry_fixture(api: Api) -> None:
    """Users in nested groups, a space with a provider's support, for the registry pages."""
    from tests.support.registry import provider, support

    alice_token = api.login("alice")
    physics = api.post("/groups", token=alice_token, json={"name": "physics"}).json()
    optics = api.post("/groups", token=alice_token, json={"name": "optics"}).json()
    api.put(f"/groups/{physics['id']}/children/{optics['id']}", token=alice_token)
    bob = next(u for u in api.get("/users", token=api.root).json()["items"] if u["username"] == "bob")
    api.put(f"/groups/{optics['id']}/users/{bob['id']}", token=alice_token, json={"role": "member"})
    space = api.post("/spaces", token=alice_token, json={"name": "climate-data"}).json()
    api.put(f"/spaces/{space['id']}/groups/{physics['id']}", token=alice_token, json={"role": "member"})
    prov, _ = provider(api, "lyon")
    support(api, api.root, space["id"], prov["id"], size=50 * 2**30)


def test_workload_pages_in_a_browser(live_server: LiveServer, api: Api, browser: Any, contexts: list[Any]) -> None:
    """Templates, schedules and webhooks as alice clicks through them (no node: the launched task waits)."""
    base = live_server.url
    api.grant(user=api.make_user("alice")["id"])
    token = api.login("alice")
    made = api.post("/templates", token=token, json={"name": "nightly", "spec": {
        "name": "shell", "params": {"argv": ["echo", "v1"]}}}).json()
    api.patch(f"/templates/{made['id']}", token=token, json={"spec": {"name": "shell",
                                                                     "params": {"argv": ["echo", "v2"]}}})
    sch = api.post("/schedules", token=token, json={"template": made["id"], "interval": 3600}).json()
    page = new_page(browser, contexts)
    log_in(page, base, "alice")

    page.get_by_role("link", name="Templates").click()
    page.get_by_role("link", name="nightly").click()
    page.get_by_role("link", name="v1", exact=True).click()
    assert '"v1"' in page.locator("#spec").inner_text()
    page.get_by_label("Priority").fill("5")
    page.get_by_label("Cwd").fill("/tmp")
    shot(page, "template")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r".*/tasks/\d+$"))
    assert "launched from nightly v2" in page.locator(".flash").inner_text()
    task = api.get(f"/tasks/{task_id_of(page)}", token=token).json()
    assert (task["priority"], task["params"]) == (5, {"argv": ["echo", "v2"], "cwd": "/tmp"})

    page.get_by_role("link", name="Schedules").click()
    page.locator(f'tr[data-schedule="{sch["id"]}"]').get_by_role("button", name="Pause").click()
    page.locator(f'tr[data-schedule="{sch["id"]}"] [data-flag="paused"]').wait_for()
    assert api.get(f"/schedules/{sch['id']}", token=token).json()["enabled"] is False
    shot(page, "schedules")
    shot_phone(browser, contexts, page, "schedules-phone", "/schedules")

    page.get_by_role("link", name="Webhooks").click()
    page.get_by_label("URL").fill("https://hooks.example.org/zonefarm/nightly")
    page.get_by_label("task.failed").check()
    page.get_by_role("button", name="Create").click()
    secret = page.locator("#webhook-secret").inner_text().strip()
    assert len(secret) >= 32
    shot(page, "webhook-created")
    hook = api.get("/webhooks", token=token).json()["items"][0]
    page.get_by_role("button", name="Send a test delivery").click()
    page.wait_for_url(base + "/webhooks")
    assert page.locator(f'[data-webhook="{hook["id"]}"] .delivery-pending').count() == 1
    assert page.locator("#webhook-secret").count() == 0 and secret not in page.content()
    shot(page, "webhooks")
    shot_phone(browser, contexts, page, "webhooks-phone", "/webhooks")

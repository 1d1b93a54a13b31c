"""Who may submit what (issue 11): grants, space write permission, fair use, and the params
refused at submission (host volumes, images the site does not allow, NUL bytes).

Over real HTTP on SQLite and PostgreSQL. Each test is an attack an ordinary registered
user could make on a fresh deployment before grants existed; each fails on that code.
Claims run in-process against the live server's database, standing in for a dispatcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control.core.config import ConfigError, Settings, load_settings
from control.farm import catalogue
from control.farm.claims import claim
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.client import Api
from tests.support.nodes import SignedNode
from tests.support.registry import error, group, join, provider, space

SHELL = {"name": "shell", "params": {"argv": ["echo", "hi"]}}
MAX_QUEUED = 3
MAX_RUNNING = 2
RETRY_AFTER = 17


LIMITS = {"user_max_queued": MAX_QUEUED, "user_max_running": MAX_RUNNING, "user_limit_retry_after": RETRY_AFTER}
small_limits = pytest.mark.parametrize("settings", [LIMITS], indirect=True, ids=["small-limits"])


@pytest.fixture
def settings(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Settings:
    """busybox the only image allowed; with ``small_limits``, fair use shows in a few tasks."""
    return Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                    data_dir=str(tmp_path / "data"), listen="127.0.0.1:0", container_images="busybox:*",
                    **getattr(request, "param", {}))


def node(api: Api, name: str, **kw: Any) -> SignedNode:
    signed = SignedNode(api, name, NODES_SECRET)
    resp = signed.register(**kw)
    assert resp.status_code in (200, 201), resp.text
    return signed


def post(api: Api, token: str, **body: Any) -> Any:
    return api.post("/tasks", token=token, json={**SHELL, **body})


def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


# --- grants -------------------------------------------------------------------------------

def test_a_user_without_a_grant_is_refused_with_the_grant_it_lacks(api: Api) -> None:
    alice, token = api.user_with_token("alice")
    message = error(post(api, token, queue="batch"), 403)
    assert "no grant to run task type 'shell' on queue 'batch'" in message
    assert "POST /api/v1/grants" in message and f'"user": {alice["id"]}' in message
    assert api.get("/tasks", token=api.root).json()["total"] == 0  # nothing was queued
    api.grant(user=alice["id"], task_type="container", queue="batch")  # another type: still refused
    api.grant(user=alice["id"], task_type="shell", queue="default")  # another queue: still refused
    assert "on queue 'batch'" in error(post(api, token, queue="batch"), 403)
    ok(post(api, token))  # queue default is granted
    ok(post(api, api.root, queue="batch"))  # root may do anything
    _, provider_token = provider(api, "prov1")
    assert "provider token" in error(post(api, provider_token), 403)  # a provider submits nothing


def test_a_group_grant_reaches_members_of_nested_groups(api: Api) -> None:
    alice, token = api.user_with_token("alice")
    team = group(api, api.root, "climate-team")
    sub = group(api, api.root, "climate-interns")
    assert api.put(f"/groups/{team['id']}/children/{sub['id']}", token=api.root).status_code == 201
    join(api, api.root, "groups", sub["id"], alice["id"])
    assert error(post(api, token, queue="batch"), 403)
    grant = api.grant(group=team["id"], task_type="shell", queue="batch")
    assert grant["holder"] == "group climate-team"
    task = ok(post(api, token, queue="batch"))
    assert task["owner"] == alice["id"]
    assert error(post(api, token, queue="default"), 403)  # the grant names batch only
    # Alice sees the grant that applies to her through the nested group, and nothing else.
    api.grant(user=api.make_user("bob")["id"])
    mine = api.get("/grants", token=token).json()
    assert [g["id"] for g in mine["items"]] == [grant["id"]]
    assert api.get(f"/grants/{grant['id']}", token=token).status_code == 200
    # Leaving the nested group takes the right away.
    assert api.delete(f"/groups/{sub['id']}/users/{alice['id']}", token=api.root).status_code == 204
    assert "no grant" in error(post(api, token, queue="batch"), 403)


def test_region_and_broadcast_targets_need_their_own_grant(api: Api) -> None:
    for name, region in (("eu1", "eu"), ("eu2", "eu"), ("us1", "us")):
        node(api, name, region=region)
    alice, token = api.user_with_token("alice")
    single = api.grant(user=alice["id"], task_type="shell", queue="default")
    ok(post(api, token))
    message = error(post(api, token, queue="default", target={"region": "eu"}), 403)
    assert "no grant to broadcast task type 'shell' to region 'eu' on queue 'default'" in message
    assert "allow 'single' targets only" in message and '"targets": "region"' in message
    assert "to every node" in error(post(api, token, queue="default", target={"all": True}), 403)
    assert api.delete(f"/grants/{single['id']}", token=api.root).status_code == 204
    api.grant(user=alice["id"], task_type="shell", queue="default", targets="region")
    region = ok(post(api, token, queue="default", target={"region": "eu"}))
    assert len(region["children"]) == 2
    ok(post(api, token))  # a region grant covers single runs too
    assert '"targets": "all"' in error(post(api, token, queue="default", target={"all": True}), 403)
    # A broadcast naming no queue reaches every queue: only a grant on '*' covers it.
    assert "on every queue" in error(post(api, token, target={"region": "eu"}), 403)
    api.grant(user=alice["id"], task_type="shell", queue="*", targets="all")
    assert len(ok(post(api, token, target={"all": True}))["children"]) == 3


def test_a_task_pinned_to_a_node_needs_a_grant_for_a_queue_that_node_serves(api: Api) -> None:
    node(api, "gpu1", queues=["gpu"])
    alice, token = api.user_with_token("alice")
    api.grant(user=alice["id"], task_type="shell", queue="default")
    message = error(post(api, token, target={"node": "gpu1"}), 403)  # the queue field does not route it
    assert "on node 'gpu1' (it serves queue(s) gpu)" in message
    assert "no such node" in error(post(api, token, target={"node": "ghost"}), 403)
    api.grant(user=alice["id"], task_type="shell", queue="gpu")
    ok(post(api, token, target={"node": "gpu1"}))


# --- the grants resource ------------------------------------------------------------------------

def test_root_manages_grants_over_rest(api: Api) -> None:
    alice, token = api.user_with_token("alice")
    team = group(api, api.root, "ops")
    created = api.post("/grants", token=api.root, json={"user": alice["id"], "task_type": "shell",
                                                          "queue": "batch"})
    assert created.status_code == 201, created.text
    grant = created.json()
    assert created.headers["Location"] == f"/api/v1/grants/{grant['id']}"
    assert grant | {"created_at": None} == {"id": grant["id"], "user": alice["id"], "group": None,
                                            "holder": "user alice", "task_type": "shell", "queue": "batch",
                                            "targets": "single", "created_at": None}
    second = api.grant(group=team["id"], task_type="*", queue="*", targets="all")
    assert error(api.post("/grants", token=api.root, json={"user": alice["id"], "task_type": "shell",
                                                            "queue": "batch", "targets": "all"}), 409)
    listed = lambda **p: [g["id"] for g in api.get("/grants", token=api.root, params=p).json()["items"]]  # noqa: E731
    assert listed() == [grant["id"], second["id"]]
    assert listed(user=alice["id"]) == [grant["id"]]
    assert listed(group=team["id"]) == [second["id"]]
    assert listed(task_type="*") == [second["id"]] and listed(queue="batch") == [grant["id"]]
    assert listed(targets="all") == [second["id"]]
    assert listed(applies_to=alice["id"]) == [grant["id"]]
    join(api, api.root, "groups", team["id"], alice["id"])
    assert listed(applies_to=alice["id"]) == [grant["id"], second["id"]]
    assert listed(limit=1, offset=1) == [second["id"]]
    assert api.get(f"/grants/{grant['id']}", token=api.root).json()["holder"] == "user alice"
    # Only root creates and deletes; a user may not grant itself anything.
    assert error(api.post("/grants", token=token, json={"user": alice["id"]}), 403)
    assert error(api.delete(f"/grants/{grant['id']}", token=token), 403)
    assert api.delete(f"/grants/{grant['id']}", token=api.root).status_code == 204
    assert api.get(f"/grants/{grant['id']}", token=api.root).status_code == 404
    assert api.delete(f"/grants/{grant['id']}", token=api.root).status_code == 404
    # Deleting the group takes its grants with it.
    assert api.delete(f"/groups/{team['id']}", token=api.root).status_code == 204
    assert listed() == []


@pytest.mark.parametrize("body, field", [
    ({"task_type": "shell"}, "user"),  # no holder
    ({"user": 1, "group": 1}, "user"),  # two holders
    ({"user": 999}, "user"),
    ({"group": 999}, "group"),
    ({"user": 1, "task_type": "nope"}, "task_type"),
    ({"user": 1, "queue": "bad queue"}, "queue"),
    ({"user": 1, "targets": "galaxy"}, "targets"),
])
def test_bad_grants_get_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    api.make_user("alice")
    assert field in error(api.post("/grants", token=api.root, json=body), 422)


def test_a_users_grants_go_with_the_user(api: Api) -> None:
    alice = api.make_user("alice")
    api.grant(user=alice["id"])
    assert api.delete(f"/users/{alice['id']}", token=api.root).status_code == 204
    assert api.get("/grants", token=api.root).json()["total"] == 0


# --- spaces -------------------------------------------------------------------------------------

PIPELINE = {"name": "pipeline", "params": {"generate": [["sh", "-c", "echo x > out.txt"]], "outputs": ["out.txt"]}}


def test_a_task_writing_into_a_space_needs_write_permission_there(api: Api) -> None:
    owner, owner_token = api.submitter("olga")
    alice, token = api.submitter("alice")
    climate = space(api, owner_token, "climate")
    message = error(api.post("/tasks", token=token, json={**PIPELINE, "space": climate["id"]}), 403)
    assert "writes its outputs into space" in message and "write permission" in message
    assert "not a member" in error(post(api, token, space=climate["id"]), 403)
    join(api, owner_token, "spaces", climate["id"], alice["id"], "member")  # member: may write
    task = ok(api.post("/tasks", token=token, json={**PIPELINE, "space": climate["id"]}))
    assert task["space"] == climate["id"] and task["owner"] == alice["id"]
    # A member still needs a grant for the type: nick holds one for shell only.
    narrow, narrow_token = api.user_with_token("nick")
    api.grant(user=narrow["id"], task_type="shell")
    join(api, owner_token, "spaces", climate["id"], narrow["id"])
    assert "task type 'pipeline'" in error(api.post("/tasks", token=narrow_token,
                                                    json={**PIPELINE, "space": climate["id"]}), 403)
    assert owner["id"] in [u["id"] for u in api.get(f"/spaces/{climate['id']}/users",
                                                   token=api.root).json()["items"]]


# --- fair use -----------------------------------------------------------------------------------

@small_limits
def test_over_the_queued_limit_is_429_with_retry_after(api: Api) -> None:
    for name in ("n1", "n2"):
        node(api, name)
    _, token = api.submitter("alice", targets="all")
    _, bob_token = api.submitter("bob")
    for _ in range(MAX_QUEUED):
        ok(post(api, token))
    resp = post(api, token)
    message = error(resp, 429)
    assert resp.json()["error"]["code"] == "too_many_requests"
    assert resp.headers["Retry-After"] == str(RETRY_AFTER)
    assert f"you have {MAX_QUEUED} task(s) waiting" in message and "user_max_queued" in message
    ok(post(api, bob_token))  # the limit is per user: bob is not held back by alice's burst
    ok(post(api, api.root))  # and root has none
    assert api.post(f"/tasks/{ok(post(api, bob_token))['id']}/cancel", token=bob_token).status_code == 200
    mine = api.get("/tasks", token=token, params={"state": "queued"}).json()["items"]
    assert api.post(f"/tasks/{mine[0]['id']}/cancel", token=token).status_code == 200
    ok(post(api, token))  # one cancelled: room for one more
    # A broadcast counts one task per node it reaches: with 2 waiting, 2 more are too many, 1 more fits.
    cancel = api.get("/tasks", token=token, params={"state": "queued"}).json()["items"][0]
    assert api.post(f"/tasks/{cancel['id']}/cancel", token=token).status_code == 200
    assert "this submission adds 2" in error(post(api, token, target={"all": True}), 429)
    ok(post(api, token, target={"node": "n1"}))


@small_limits
def test_over_the_running_limit_new_submissions_are_429(api: Api) -> None:
    node(api, "n1", concurrency=4)
    _, token = api.submitter("alice")
    for _ in range(MAX_RUNNING):
        ok(post(api, token))
    assert len(claim("test", 10)) == MAX_RUNNING  # both assigned: running, for the limit
    resp = post(api, token)
    assert "assigned or running" in error(resp, 429) and resp.headers["Retry-After"] == str(RETRY_AFTER)


def test_limits_are_settings_with_defaults() -> None:
    defaults = Settings()
    assert defaults.user_max_queued > 0 and defaults.user_max_running > 0 and defaults.user_limit_retry_after > 0
    assert defaults.container_images == "" and defaults.container_image_patterns == ()
    env = {"ZONEFARM_USER_MAX_QUEUED": "5", "ZONEFARM_CONTAINER_IMAGES": "busybox:*, ghcr.io/acme/*"}
    loaded = load_settings(env=env)
    assert loaded.user_max_queued == 5 and loaded.container_image_patterns == ("busybox:*", "ghcr.io/acme/*")
    with pytest.raises(ConfigError, match="user_max_running"):
        load_settings(env={"ZONEFARM_USER_MAX_RUNNING": "-1"})


# --- params refused at submission -----------------------------------------------------------

def test_a_container_asking_for_host_volumes_is_refused(api: Api) -> None:
    body = {"name": "container", "params": {"image": "busybox:1.36", "volumes": {"/": "/hostroot"}}}
    assert "params.volumes: host paths may not be mounted" in error(api.post("/tasks", token=api.root, json=body),
                                                                    422)
    _, token = api.submitter("alice")
    assert "params.volumes" in error(api.post("/tasks", token=token, json=body), 422)
    assert "volumes" not in catalogue.schema("container")["properties"]
    assert api.get("/tasks", token=api.root).json()["total"] == 0


def test_an_image_the_site_does_not_allow_is_refused(api: Api) -> None:
    for image in ("alpine", "busybox", "evil/busybox:1", "docker.io/library/busybox:1"):
        resp = api.post("/tasks", token=api.root, json={"name": "container", "params": {"image": image}})
        message = error(resp, 422)
        assert "params.image" in message and repr(image) in message and "busybox:*" in message
    _, token = api.submitter("alice")
    assert "params.image" in error(api.post("/tasks", token=token, json={"name": "container",
                                                                        "params": {"image": "alpine"}}), 422)
    ok(api.post("/tasks", token=token, json={"name": "container", "params": {"image": "busybox:1.36"}}))
    # Empty allows none: a site runs no image its operator did not list.
    assert "allows no container image" in catalogue.image_problem("container", {"image": "busybox:1.36"}, ())
    assert catalogue.image_problem("shell", {"argv": ["x"]}, ()) is None


@pytest.mark.parametrize("task, field", [
    ({"name": "shell", "params": {"argv": ["echo", "a\x00b"]}}, "params.argv[1]"),
    ({"name": "shell", "params": {"argv": ["true"], "env": {"A": "x\x00"}}}, "params.env.A"),
    ({"name": "shell", "params": {"argv": ["true"], "cwd": "/tmp\x00/x"}}, "params.cwd"),
    ({"name": "container", "params": {"image": "busybox:1", "command": ["sh", "\x00"]}}, "params.command[1]"),
    ({"name": "container", "params": {"image": "busybox:1", "env": {"B": "\x00"}}}, "params.env.B"),
    ({"name": "pipeline", "params": {"generate": [["echo", "\x00"]], "outputs": ["o"]}}, "params.generate[0][1]"),
    ({"name": "pipeline", "params": {"generate": [["true"]], "outputs": ["o"], "env": {"C": "\x00"}}},
     "params.env.C"),
])
def test_nul_bytes_in_argv_or_env_are_422(api: Api, task: dict[str, Any], field: str) -> None:
    if task["name"] == "pipeline":
        task = {**task, "space": space(api, api.root, "s1")["id"]}
    assert f"{field}: holds a NUL byte" in error(api.post("/tasks", token=api.root, json=task), 422)
    alice, token = api.submitter("alice")
    if "space" in task:
        join(api, api.root, "spaces", task["space"], alice["id"])
    assert f"{field}: holds a NUL byte" in error(api.post("/tasks", token=token, json=task), 422)
    assert api.get("/tasks", token=api.root).json()["total"] == 0

"""End to end on the deployed lab, through the public REST API only (issue 5).

Runs after test_lab_deploy on the same session lab (see conftest's _ORDER) and reuses its state:
site.yml deployed, and wk3 added by the inventory edit (`--limit wk3`, in region "edge"). Run alone,
the `api` fixture deploys the same way first. Docker/ssh are used only to look at files on the
hosts (the side effects the API cannot show) and to run the decommission playbook as an operator.
The last test decommissions wk3: later lab modules see wk1 and wk2 as the workers.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.lab import deploy
from tests.lab.inventory import api_base, ca_file, lab_secrets, write_inventory
from tests.lab.lab import Lab
from tests.support.procs import background
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.slow,
              pytest.mark.timeout(1200)]  # run alone, the first test's setup deploys
ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("wk1", "wk2", "wk3")
# Where a shell task's mark ends up on the worker: the task writes it in its own directory (the
# sandbox lets it write nowhere else that lasts), which the runner keeps as the attempt's work/.
MARKS = "/var/lib/zonefarm/work/tasks/*/*/work"


class Api:
    """The zone's REST API as root (or as a user: ``as_user``); every call fails the test with the
    JSON error it got."""

    def __init__(self, lab: Lab, token: str | None = None) -> None:
        self.lab = lab
        self.base = api_base(lab)
        self.session = requests.Session()
        # Per request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify.
        self.verify = str(ca_file(lab))
        self.session.headers["Authorization"] = f"Bearer {token or lab_secrets(lab)['root_secret']}"

    def as_user(self, username: str, password: str) -> Api:
        """The same API with a user's token (OAuth2 password grant)."""
        resp = requests.post(self.base + "/auth/token", data={"grant_type": "password", "username": username,
                                                              "password": password}, timeout=15, verify=self.verify)
        assert resp.status_code == 200, resp.text
        return Api(self.lab, resp.json()["access_token"])

    def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201, 204)) -> Any:
        resp = self.session.request(method, self.base + path, json=body, timeout=15, verify=self.verify)
        assert resp.status_code in expect, f"{method} {path} -> {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.call("PUT", path, body)

    def task(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/tasks", {"timeout": 120, "max_attempts": 1, **body})

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 120, every: float = 1) -> Any:
        """Poll until `check()` is truthy (bounded); the last value explains a timeout."""
        return wait_for(what, check, timeout, every)

    def finished(self, task_id: int, timeout: float = 120) -> dict[str, Any]:
        """The task once it has ended (any terminal state), with its events on failure to finish."""
        terminal = {"succeeded", "failed", "cancelled", "timed_out", "lost"}
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(f"/tasks/{task_id}")
            if task["state"] in terminal and all(c["state"] in terminal for c in task["children"]):
                return task
            if time.monotonic() > deadline:
                events = self.get(f"/tasks/{task_id}/events")
                pytest.fail(f"task {task_id} still {task['state']} after {timeout:.0f}s: {task} {events}")
            time.sleep(1)

    def log(self, task_id: int) -> str:
        return self.get(f"/tasks/{task_id}/log")["text"]


def _mark_argv(token: str, then: str = "") -> list[str]:
    """A shell task that writes its host name into a mark file named for the test, then prints it."""
    script = f"{then}hostname > {token} && echo ran-on=$(hostname)"
    return ["sh", "-c", script]


def _marked(lab: Lab, token: str) -> dict[str, str]:
    """Worker -> the host name its mark file holds, for each worker that has the mark."""
    found = {}
    for name in WORKERS:
        code, out = lab.exec(name, f"cat {MARKS}/{shlex.quote(token)}")  # the glob finds the attempt
        if code == 0:
            found[name] = out.strip()
    return found


def _ansible_env(lab: Lab) -> dict[str, str]:
    """What deploy.run_playbook runs ansible-playbook with (project config, this lab's fact cache)."""
    venv_bin = ROOT / ".venv" / "bin"
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(lab.workdir / "facts")}


def _online(api: Api) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in api.get("/nodes?limit=100")["items"] if n["state"] == "online"}


@pytest.fixture(scope="module")
def inventory(lab: Lab) -> Path:
    """The inventory test_lab_deploy wrote and edited (the same path)."""
    return lab.workdir / "inventory"


@pytest.fixture(scope="module")
def api(lab: Lab, inventory: Path) -> Api:
    """The deployed platform with wk1, wk2 and wk3 online, as test_lab_deploy left it.

    Run alone (no inventory yet), this module deploys the same way first; after a failed deploy
    it skips, since test_lab_deploy has reported the failure already.
    """
    if not (inventory / "hosts.yml").exists():
        deploy.wheelhouse()
        run = deploy.run_playbook(write_inventory(lab, inventory), lab)
        assert run.ok, run.first_failure()
        run = deploy.run_playbook(write_inventory(lab, inventory, without=()), lab, "--limit", "wk3")
        assert run.ok, run.first_failure()
    client = Api(lab)
    try:
        up = ca_file(lab).exists() and client.session.get(client.base + "/healthz", timeout=5, verify=client.verify).ok
    except requests.RequestException:
        up = False
    if not up or "wk3:" not in (inventory / "hosts.yml").read_text():
        pytest.skip("the deploy or wk3's join failed or did not run (see test_lab_deploy)")
    client.wait("wk1, wk2 and wk3 online", lambda: set(WORKERS) <= set(_online(client)), timeout=60)
    return client


@pytest.fixture(scope="module")
def space(api: Api, lab: Lab) -> dict[str, Any]:
    """A space with a user owner and a member group, supported by both providers."""
    suffix = secrets.token_hex(3)
    passwords = {f"alice{suffix}": secrets.token_urlsafe(12), f"bob{suffix}": secrets.token_urlsafe(12)}
    alice, bob = (api.post("/users", {"username": name, "password": password})
                  for name, password in passwords.items())
    group = api.post("/groups", {"name": f"e2e-team-{suffix}", "owner": alice["id"]})
    api.put(f"/groups/{group['id']}/users/{bob['id']}", {"role": "member"})
    created = api.post("/spaces", {"name": f"e2e-space-{suffix}", "owner": alice["id"]})
    api.put(f"/spaces/{created['id']}/groups/{group['id']}", {"role": "member"})
    providers = {p["name"]: p for p in api.get("/providers?limit=100")["items"]}
    for name in ("prov1", "prov2"):
        # Support takes the provider's consent: the space asks with a support token, and each
        # provider redeems it with the token its role deployed on the host.
        ticket = api.post(f"/spaces/{created['id']}/support_tokens", {"provider": providers[name]["id"]})
        code, token = lab.exec(name, "cat /etc/zonefarm/provider.token")
        assert code == 0, f"{name}: {token}"
        resp = requests.post(f"{api.base}/providers/{providers[name]['id']}/supports", timeout=15,
                             json={"token": ticket["token"], "size": 2**30},
                             headers={"Authorization": f"Bearer {token.strip()}"}, verify=api.verify)
        assert resp.status_code == 201, f"{name} redeeming: {resp.status_code} {resp.text}"
    return {**created, "users": (alice, bob), "group": group, "providers": providers, "passwords": passwords}


def test_space_membership_and_support_reach_the_providers_storage(api: Api, lab: Lab,
                                                                  space: dict[str, Any]) -> None:
    alice, bob = space["users"]
    effective = api.get(f"/spaces/{space['id']}/effective_users")["items"]
    assert {alice["username"], bob["username"]} <= {u["username"] for u in effective}
    supporting = api.get(f"/spaces/{space['id']}/providers")["items"]
    assert sorted((s["provider_name"], s["size"]) for s in supporting) == [("prov1", 2**30), ("prov2", 2**30)]
    for name in ("prov1", "prov2"):
        path = f"{space['providers'][name]['storage_path']}/{space['id']}"
        api.wait(f"{path} on {name}", lambda n=name, p=path: lab.exec(n, f"test -d {p}")[0] == 0, timeout=60)
        code, out = lab.exec(name, f"stat -c %F {path}")
        assert (code, out.strip()) == (0, "directory"), f"{name}: {out}"


@pytest.mark.parametrize("worker", ["wk2", "wk3"])
def test_per_node_task_runs_on_that_worker(api: Api, lab: Lab, worker: str) -> None:
    token = f"node-{worker}-{secrets.token_hex(4)}"
    task = api.task({"name": "shell", "params": {"argv": _mark_argv(token)}, "target": {"node": worker}})
    done = api.finished(task["id"])
    assert (done["state"], done["node"], done["exit_code"]) == ("succeeded", worker, 0), done
    assert f"ran-on={worker}" in api.log(task["id"])
    assert _marked(lab, token) == {worker: worker}


def test_region_task_runs_on_every_worker_of_the_region_only(api: Api, lab: Lab) -> None:
    regions = {name: node["region"] for name, node in _online(api).items()}
    assert (regions["wk1"], regions["wk2"], regions["wk3"]) == ("default", "default", "edge")
    token = f"region-{secrets.token_hex(4)}"
    task = api.task({"name": "shell", "params": {"argv": _mark_argv(token)}, "target": {"region": "default"}})
    assert sorted(c["node"] for c in task["children"]) == ["wk1", "wk2"]
    done = api.finished(task["id"])
    assert {c["node"]: c["state"] for c in done["children"]} == {"wk1": "succeeded", "wk2": "succeeded"}
    for child in done["children"]:
        assert f"ran-on={child['node']}" in api.log(child["id"])
    assert _marked(lab, token) == {"wk1": "wk1", "wk2": "wk2"}


def test_broadcast_runs_once_on_every_worker(api: Api, lab: Lab) -> None:
    token = f"all-{secrets.token_hex(4)}"
    task = api.task({"name": "shell", "params": {"argv": _mark_argv(token)}, "target": {"all": True}})
    done = api.finished(task["id"])
    assert sorted((c["node"], c["state"]) for c in done["children"]) == [(w, "succeeded") for w in WORKERS]
    assert _marked(lab, token) == {w: w for w in WORKERS}


def test_pipeline_outputs_land_in_the_space_directory_on_a_provider(api: Api, lab: Lab,
                                                                     space: dict[str, Any]) -> None:
    """Submitted by bob, an ordinary user: refused until root grants his group the pipeline type."""
    token = secrets.token_hex(8)
    params = {"prepare": [["mkdir", "-p", "out"]],
              "generate": [["sh", "-c", f"echo {token} > out/result.txt && hostname > out/host.txt"]],
              "outputs": ["out/result.txt", "out/host.txt"]}
    body = {"name": "pipeline", "params": params, "space": space["id"], "target": {"node": "wk1"}}
    _, bob = space["users"]
    as_bob = api.as_user(bob["username"], space["passwords"][bob["username"]])
    refused = as_bob.call("POST", "/tasks", {"timeout": 120, "max_attempts": 1, **body}, expect=(403,))
    assert "no grant to run task type 'pipeline' on node 'wk1'" in refused["error"]["message"], refused
    api.post("/grants", {"group": space["group"]["id"], "task_type": "pipeline", "queue": "*"})
    task = as_bob.task(body)
    assert task["owner"] == bob["id"]
    done = api.finished(task["id"], timeout=180)
    assert (done["state"], done["node"]) == ("succeeded", "wk1"), (done, api.log(task["id"]))
    landed = {}
    for name in ("prov1", "prov2"):
        base = f"{space['providers'][name]['storage_path']}/{space['id']}/task-{task['id']}/out"
        code, out = lab.exec(name, f"cat {base}/result.txt {base}/host.txt")
        if code == 0:
            landed[name] = out.split()
    assert landed, f"no provider holds the outputs: {done['outputs']} {api.log(task['id'])}"
    assert all(words == [token, "wk1"] for words in landed.values()), landed


def test_decommissioned_worker_drains_finishes_its_task_and_takes_no_more(api: Api, lab: Lab,
                                                                          inventory: Path) -> None:
    token = f"decom-{secrets.token_hex(4)}"
    long = api.task({"name": "shell", "params": {"argv": _mark_argv(token, then="sleep 15 && ")},
                     "target": {"node": "wk3"}})
    api.wait("the long task running on wk3", lambda: api.get(f"/tasks/{long['id']}")["state"] == "running", 90)
    with background([str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inventory), "playbooks/decommission.yml",
                     "--limit", "wk3", "--vault-password-file", str(lab.workdir / "vault-password")],
                    cwd=ROOT, env=_ansible_env(lab)) as proc:
        api.wait("wk3 draining", lambda: api.get("/nodes/wk3")["draining"], timeout=90)
        assert api.get(f"/tasks/{long['id']}")["state"] == "running", "the drain came too late to test"
        # Taken while draining: a task for wk3 is not started there, an untargeted one goes elsewhere.
        held = api.task({"name": "shell", "params": {"argv": ["true"]}, "target": {"node": "wk3"}})
        elsewhere = api.task({"name": "shell", "params": {"argv": _mark_argv(token + "-any")}})
        output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-3000:]
    done = api.get(f"/tasks/{long['id']}")
    assert (done["state"], done["node"], done["exit_code"]) == ("succeeded", "wk3", 0), done
    assert _marked(lab, token).get("wk3") == "wk3"
    assert "wk3" not in _online(api)
    resp = api.session.get(f"{api.base}/nodes/wk3", timeout=10, verify=api.verify)
    assert resp.status_code == 404 or resp.json()["state"] == "deregistered", resp.text
    moved = api.finished(elsewhere["id"])
    assert moved["state"] == "succeeded" and moved["node"] in ("wk1", "wk2"), moved
    assert _marked(lab, token + "-any") == {moved["node"]: moved["node"]}
    still = api.get(f"/tasks/{held['id']}")
    assert still["state"] == "queued" and still["node"] is None, still
    api.post(f"/tasks/{held['id']}/cancel")
    code, out = lab.exec("wk3", "systemctl is-active zonefarm-node")
    assert out.strip() != "active", out

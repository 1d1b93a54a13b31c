"""Faults on the deployed lab: a worker dies, the API dies, a cluster manager dies, a worker is cut off.

The platform is driven through its public REST API only; Docker is used for the faults
themselves (stop, kill, start, network disconnect) and `Lab.exec` to look at services. Each
test puts the platform back (hosts started, reconnected, nodes online) in a `finally`, so the
next one starts from a working farm. Runs last in the lab session (see `_ORDER` in conftest).
The lab's leases are short (tests/lab/inventory.py: NODE_LEASE, TASK_LEASE) so a lost node
or task is noticed in seconds rather than a minute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from control.node.signing import derive_node_key, sign_headers
from tests.lab import deploy
from tests.lab.inventory import NODE_LEASE, TASK_LEASE, api_base, ca_file, lab_secrets, write_inventory
from tests.lab.lab import Lab
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
STOP_GRACE = 10  # seconds `docker stop` waits for a host's shutdown before it kills the host


class Api:
    """The zone's REST API as the administrator; retries while the zone host is down or booting."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.secrets = lab_secrets(lab)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.secrets['root_secret']}"
        # Per request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify.
        self.verify = str(ca_file(lab))

    @property
    def base(self) -> str:
        return api_base(self.lab)

    def call(self, method: str, path: str, patience: float = 90, **kw: Any) -> requests.Response:
        deadline = time.monotonic() + patience
        while True:
            try:
                resp = self.session.request(method, self.base + path, timeout=10, verify=self.verify, **kw)
                if resp.status_code < 500:
                    return resp
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.ConnectionError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: no answer within {patience}s ({last})")
            time.sleep(1)

    def get(self, path: str, **kw: Any) -> Any:
        resp = self.call("GET", path, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def submit(self, argv: list[str], **fields: Any) -> dict[str, Any]:
        body = {"name": "shell", "params": {"argv": argv}, "queue": "default", **fields}
        resp = self.call("POST", "/tasks", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def task(self, task_id: int) -> dict[str, Any]:
        return self.get(f"/tasks/{task_id}")

    def events(self, task_id: int) -> list[dict[str, Any]]:
        return self.get(f"/tasks/{task_id}/events")

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.get("/nodes")["items"]}


def terminal_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """State changes into a terminal state: a task has exactly one, or it completed twice."""
    return [e for e in events if e["to_state"] in TERMINAL and e["from_state"] != e["to_state"]]


def takers(api: Api) -> set[str]:
    """Workers that take untargeted tasks of the default queue now."""
    return {name for name, n in api.nodes().items()
            if n["state"] == "online" and not n["cordoned"] and "default" in n["queues"]}


@pytest.fixture(scope="module")
def api(lab: Lab) -> Api:
    """The deployed platform. In the full lab session test_lab_deploy has deployed it; run on its
    own (or against an attached lab) this deploys when the zone does not answer yet."""
    try:
        # no CA yet means no deploy yet
        up = ca_file(lab).exists() and requests.get(f"{api_base(lab)}/healthz", timeout=5, verify=str(ca_file(lab))).ok
    except requests.RequestException:
        up = False
    if not up:
        deploy.wheelhouse()
        run = deploy.run_playbook(write_inventory(lab, lab.workdir / "inventory"), lab)
        assert run.ok, run.first_failure()
    the_api = Api(lab)
    wait_for("two workers online", lambda: len(takers(the_api)) >= 2, 120)
    return the_api


@pytest.fixture
def farm_restored(lab: Lab, api: Api) -> Iterator[None]:
    """After each fault: every host running and on the network, every worker back online."""
    before = takers(api)
    yield
    for name, host in lab.hosts.items():
        host.container.reload()
        if lab.network_name not in host.container.attrs["NetworkSettings"]["Networks"] \
                and host.container.status == "running":
            lab.reconnect(name)
        lab.start_again(name)
    wait_for(f"{sorted(before)} online again", lambda: before <= takers(api), 180, every=1)


def running_on(api: Api, task_id: int, timeout: float = 90) -> str:
    """Wait for the task to run; returns its node."""
    task = wait_for(f"task {task_id} running", lambda: (t := api.task(task_id))["state"] == "running" and t,
                    timeout)
    return task["node"]


def test_a_dead_workers_task_is_requeued_and_succeeds_elsewhere(lab: Lab, api: Api,
                                                                 farm_restored: None) -> None:
    """`docker stop` the worker mid-task: lost, requeued, then succeeded on the other worker."""
    # The task outlives the stop's grace by far, so it cannot end on the victim by itself. The
    # host's shutdown stops the task's unit with SIGTERM, and later kills every process left
    # (the runner and the sandbox among them). None of that may end the task: a SIGTERM to a
    # oneshot unit is no clean exit, and a runner whose node is going down reports nothing
    # (docs/farm-contract.md), so the task is lost when its lease runs out and requeued. Until
    # 2026-12-08 the unit was Type=exec, systemd counted the SIGTERM as success, and the task
    # ended `succeeded` in attempt 1 whenever the runner reported before the final kill.
    task = api.submit(["sleep", str(STOP_GRACE + 20)])
    victim = running_on(api, task["id"])
    asked = time.monotonic()
    lab.hosts[victim].container.stop(timeout=STOP_GRACE)
    stopped = time.monotonic()  # the leases count from here: the host is dead, its task still running
    lab.hosts[victim].container.reload()
    assert lab.hosts[victim].container.status == "exited"

    def requeued() -> float | None:
        states = [e["to_state"] for e in api.events(task["id"])]
        if "lost" in states and "queued" in states[states.index("lost"):]:
            return time.monotonic() - stopped
        return None

    to_requeue = wait_for("the task to be lost and requeued", requeued, NODE_LEASE + TASK_LEASE + 30)
    print(f"\nworker {victim} stopped in {stopped - asked:.1f}s -> task {task['id']} requeued in {to_requeue:.1f}s "
          f"(node_lease={NODE_LEASE}s task_lease={TASK_LEASE}s)")
    done = wait_for("the task to end", lambda: (t := api.task(task["id"]))["state"] in TERMINAL and t, 90)
    events = api.events(task["id"])
    assert done["state"] == "succeeded", (done, events)
    assert done["node"] != victim and done["attempt"] == 2, done
    assert [e["to_state"] for e in terminal_events(events)] == ["succeeded"], events
    assert done["last_node"] == victim, done
    # The bound the leases promise: the node lease (or the task lease), plus a reaper round.
    assert to_requeue < max(NODE_LEASE, TASK_LEASE) + 15, to_requeue
    assert api.nodes()[victim]["state"] == "lost"


def test_every_task_ends_once_when_the_api_host_is_killed(lab: Lab, api: Api, farm_restored: None) -> None:
    """`docker kill` zone1 (API and database) during 200 tasks, `docker start` it: systemd brings
    the services back and every task ends in exactly one terminal state."""
    ids = [api.submit(["true"])["id"] for _ in range(200)]
    wait_for("the first tasks to finish", lambda: api.get("/tasks?state=succeeded&limit=1")["total"] > 0, 120)
    before = [t for t in api.get("/tasks?limit=500")["items"] if t["id"] in ids]
    lab.hosts["zone1"].container.kill()
    pending = sum(t["state"] not in TERMINAL for t in before)
    assert pending > 0, "every task ended before the kill: the fault came too late to test anything"
    time.sleep(3)
    lab.start_again("zone1")
    wait_for("the API back", lambda: api.get("/healthz", patience=120)["status"] == "ok", 120)
    # systemd, not the test, brought them back: both units are enabled and start at boot.
    wait_for("zonefarm-api and postgresql active on zone1",
             lambda: lab.exec("zone1", "systemctl is-active zonefarm-api postgresql")[1].split() == ["active"] * 2,
             60)

    def all_ended() -> bool:
        listed = api.get("/tasks?limit=500")["items"]
        return all(t["state"] in TERMINAL for t in listed if t["id"] in ids)

    wait_for("all 200 tasks to end", all_ended, 420, every=3)
    counts: dict[str, int] = {}
    retried = 0
    for task_id in ids:
        events = api.events(task_id)
        ends = terminal_events(events)
        assert len(ends) == 1, (task_id, events)
        task = api.task(task_id)
        assert ends[0]["to_state"] == task["state"], (task_id, task["state"], events)
        counts[task["state"]] = counts.get(task["state"], 0) + 1
        retried += task["attempt"] > 1
    print(f"\n200 tasks across a zone1 kill ({pending} not yet ended at the kill): {counts}, "
          f"{retried} needed a second attempt")
    assert counts.get("succeeded") == 200, counts


def test_the_other_cluster_manager_keeps_dispatching(lab: Lab, api: Api, farm_restored: None) -> None:
    """`docker stop` cm1: cm2 claims and runs new tasks; cm1 starts again with its dispatcher."""
    lab.hosts["cm1"].container.stop(timeout=10)
    try:
        ids = [api.submit(["true"])["id"] for _ in range(4)]
        for task_id in ids:
            done = wait_for(f"task {task_id} to end",
                            lambda tid=task_id: (t := api.task(tid))["state"] in TERMINAL and t, 120)
            assert done["state"] == "succeeded", done
            claims = [e["reason"] for e in api.events(task_id) if e["to_state"] == "assigned"]
            assert claims and all("cm2" in reason for reason in claims), claims
    finally:
        lab.start_again("cm1")
    wait_for("cm1's dispatcher active",
             lambda: lab.exec("cm1", "systemctl is-active zonefarm-dispatcher")[1].strip() == "active", 90)


def late_callback(api: Api, node: str, task_id: int, attempt: int) -> requests.Response:
    """What the cut-off worker's runner sends when it gets through: its own attempt's `finished`."""
    path = f"/api/v1/tasks/{task_id}/callback"
    body = json.dumps({"event": "finished", "attempt": attempt, "exit_code": 0, "outputs": {}}).encode()
    key = derive_node_key(api.secrets["nodes_secret"], node)  # the key the worker role wrote for it
    headers = {**sign_headers(key, node, "POST", path, body),
               "Content-Type": "application/json"}
    return requests.post(api.base.removesuffix("/api/v1") + path, data=body, headers=headers, timeout=10,
                         verify=str(ca_file(api.lab)))


def test_a_cut_off_workers_task_is_requeued_and_its_late_report_refused(lab: Lab, api: Api,
                                                                         farm_restored: None) -> None:
    """Disconnect a worker for longer than its lease: the task moves; once back, the worker's
    late reports are refused (403) and the task completes exactly once."""
    task = api.submit(["sleep", "12"])
    victim = running_on(api, task["id"])
    lab.disconnect(victim)
    try:
        wait_for("the task requeued", lambda: "queued" in [e["to_state"] for e in api.events(task["id"])[2:]],
                 NODE_LEASE + TASK_LEASE + 30)
        done = wait_for("the task to end", lambda: (t := api.task(task["id"]))["state"] in TERMINAL and t, 90)
        assert done["state"] == "succeeded" and done["node"] != victim, done
        # The victim's sleep has ended by now: its runner is retrying its `finished` (patience 180 s).
    finally:
        lab.reconnect(victim)
    wait_for(f"{victim} online again", lambda: api.nodes()[victim]["state"] == "online", NODE_LEASE * 4, every=1)
    # Its runner's `finished` gets through now, is refused (403: stale attempt) and the runner
    # stops without reporting: it marks its attempt directory done, with no runner.error.
    # The attempt's directory under the workdir the node registered (the worker role's
    # worker_workdir, /var/lib/zonefarm/work): not on the shared storage.
    attempt_dir = f"{api.nodes()[victim]['workdir']}/tasks/{task['id']}/1"
    wait_for(f"{victim}'s runner of attempt 1 to stop",
             lambda: lab.exec(victim, f"test -e {attempt_dir}/done")[0] == 0, 90, every=1)
    assert lab.exec(victim, f"test -e {attempt_dir}/runner.error")[0] != 0, lab.exec(victim, f"cat {attempt_dir}/*")
    events = api.events(task["id"])
    assert [e["to_state"] for e in terminal_events(events)] == ["succeeded"], events
    final = api.task(task["id"])
    assert final["state"] == "succeeded" and final["node"] == done["node"] and final["attempt"] == 2, final
    refused = late_callback(api, victim, task["id"], attempt=1)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"], refused.text

"""The task sandbox where it runs for real: systemd workers, sudo, and a worker with Docker.

Runs on the deployed lab after test_lab_e2e (conftest's _ORDER), through the public API;
the Docker engine is used to look at the hosts. The lab's workers are Debian with systemd
as PID 1, so the sandbox's backend is systemd (``worker_sandbox_backend: auto``): every
task is a transient unit with ``DynamicUser=yes`` and the sandboxing properties
(docs/security.md, "Task sandbox"). The dispatcher logs in as the service account, so the
runner is not root and reaches the sandbox through the role's one sudo rule. The suite
on the development machine tests the pool backend (tests/security/); this module is the
systemd half and the container half:

* a task's identity is a dynamic user, in its own unit's cgroup, with a read-only system,
  no view of ``/root`` or the node's config, and a private ``/tmp``;
* cancel and timeout stop the unit (no process left), memory over ``limits`` ends the task
  ``failed`` saying so;
* on a worker with Docker enabled (wk2, switched on here: the lab inventory keeps
  ``worker_docker_enabled: False``), a container task runs as a task account with only its
  own directory mounted and no capability;
* the attacks of tests/security/ that the systemd path could answer differently: templates
  in a task's strings arrive byte for byte and run nowhere, a task reads neither the node's
  secrets nor another task's directories, a NUL byte is a 422 (docs/security.md lists which
  test proves which line, here and on the development machine).
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from control.node.signing import derive_node_key
from tests.lab import deploy
from tests.lab.api import RootApi
from tests.lab.inventory import lab_secrets
from tests.lab.lab import DOCKER_HOSTS, Lab
from tests.security.test_task_reads_secrets import PROBE
from tests.security.test_template_injection import payloads

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]
WORKER = "wk1"
DOCKER_WORKER = "wk2"
IMAGE = "zonefarm-lab/busybox:1"
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range
CONFIG_DIR = "/etc/zonefarm"  # the worker role's common_config_dir: node.ini, upload_ed25519
GROW = ("import time\nb = []\nfor i in range(64):\n    b.append(bytearray(8 << 20))\n    time.sleep(0.05)\n"
        "print('survived', flush=True)\n")


class Api(RootApi):
    """The zone's REST API as root (as test_lab_e2e's), with the task calls this module makes."""

    def task(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/tasks", {"timeout": 120, "max_attempts": 1, **body})

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def wait(self, task_id: int, states: tuple[str, ...] = ("succeeded", "failed", "cancelled", "timed_out"),
             timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(f"/tasks/{task_id}")
            if task["state"] in states:
                return task
            if time.monotonic() > deadline:
                pytest.fail(f"task {task_id} still {task['state']}: {self.get(f'/tasks/{task_id}/events')}")
            time.sleep(1)

    def log(self, task_id: int) -> str:
        return self.get(f"/tasks/{task_id}/log")["text"]


@pytest.fixture(scope="module")
def api(lab: Lab) -> Api:
    inventory = lab.workdir / "inventory"
    if not (inventory / "hosts.yml").exists():
        pytest.skip("the lab is not deployed (test_lab_deploy runs first)")
    client = Api(lab)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nodes = {n["name"]: n["state"] for n in client.get("/nodes?limit=100")["items"]}
        if nodes.get(WORKER) == "online":
            return client
        time.sleep(1)
    pytest.skip(f"{WORKER} is not online")


# A task's unit is a oneshot (a SIGTERM it did not expect is no clean exit, see sandbox.py): it
# runs in its start job, so `list-units` shows it "activating start", never "active running".
RUNNING = " activating start "


def _units(lab: Lab, host: str, task_id: int) -> str:
    return lab.exec(host, f"systemctl list-units --all --no-legend 'zonefarm-task-{task_id}-*'")[1].strip()


def test_a_task_is_a_dynamic_user_in_a_sandboxed_unit(api: Api, lab: Lab) -> None:
    token = secrets.token_hex(4)
    script = (f"id -u; grep -o 'zonefarm-task-[^/]*' /proc/self/cgroup | head -1; "
              f"touch /etc/zf-probe-{token} 2>&1 | grep -c 'Read-only' ; "
              "cat /etc/zonefarm/node.ini >/dev/null 2>&1 && echo NODE-INI-READ || echo node-ini-denied; "
              "ls /root >/dev/null 2>&1 && echo ROOT-LISTED || echo root-hidden; "
              f"echo private > /tmp/zf-private-{token}; grep NoNewPrivs /proc/self/status")
    task = api.task({"name": "shell", "params": {"argv": ["sh", "-c", script]}, "target": {"node": WORKER}})
    done = api.wait(task["id"])
    assert done["state"] == "succeeded", api.log(task["id"])
    lines = api.log(task["id"]).splitlines()
    uid = int(lines[0])
    agent_uid = int(lab.exec(WORKER, "id -u zonefarm")[1])
    assert uid != 0 and uid != agent_uid and uid in DYNAMIC_UIDS, lines
    assert lines[1].startswith(f"zonefarm-task-{task['id']}-")
    assert lines[2] == "1"  # ProtectSystem=strict: the system is read-only
    assert "node-ini-denied" in lines and "root-hidden" in lines and "NoNewPrivs:\t1" in lines
    assert lab.exec(WORKER, f"test -e /tmp/zf-private-{token}")[0] != 0  # PrivateTmp
    assert lab.exec(WORKER, f"test -e /etc/zf-probe-{token}")[0] != 0
    assert _units(lab, WORKER, task["id"]) == ""  # the transient unit is gone once the task ended
    # the runner is the service account (the dispatcher logs in as it), so it went through the sudo rule
    assert api.get(f"/nodes/{WORKER}")["ansible_user"] == "zonefarm"
    assert lab.exec(WORKER, "cat /etc/sudoers.d/zonefarm-sandbox")[1].strip().endswith(
        "/opt/zonefarm/venv/bin/zonefarm-sandbox /etc/zonefarm-sandbox.ini")


def test_cancel_stops_the_unit(api: Api, lab: Lab) -> None:
    task = api.task({"name": "shell", "params": {"argv": ["sh", "-c", "echo begun; sleep 300"]},
                     "target": {"node": WORKER}, "timeout": 600})
    api.wait(task["id"], ("running",))
    deadline = time.monotonic() + 30
    while RUNNING not in _units(lab, WORKER, task["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert RUNNING in _units(lab, WORKER, task["id"])
    api.call("POST", f"/tasks/{task['id']}/cancel")
    assert api.wait(task["id"], timeout=60)["state"] == "cancelled"
    deadline = time.monotonic() + 30
    while _units(lab, WORKER, task["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _units(lab, WORKER, task["id"]) == ""
    # Nothing of the task survived. The pattern must not match the `sh -c` that runs pgrep: its
    # command line holds the pattern too, and a plain 'sleep 300' found that shell every time.
    code, out = lab.exec(WORKER, "pgrep -af '[s]leep 300'")
    assert code != 0, out


def test_timeout_stops_the_unit(api: Api, lab: Lab) -> None:
    task = api.task({"name": "shell", "params": {"argv": ["sleep", "300"]}, "target": {"node": WORKER},
                     "timeout": 5})
    done = api.wait(task["id"], timeout=90)
    assert done["state"] == "timed_out", done
    deadline = time.monotonic() + 30
    while _units(lab, WORKER, task["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _units(lab, WORKER, task["id"]) == ""


def test_memory_over_the_limit_fails_saying_so(api: Api) -> None:
    task = api.task({"name": "shell", "params": {"argv": ["python3", "-c", GROW]}, "target": {"node": WORKER},
                     "limits": {"memory_mb": 64}})
    done = api.wait(task["id"])
    assert done["state"] == "failed" and "memory limit exceeded" in done["reason"], done
    assert "survived" not in api.log(task["id"])


def _busybox_tar() -> bytes:
    """A one-binary image (busybox-static from this machine), imported on the worker: no registry."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.skip("busybox-static is missing here: run `make deps`")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        # The directory's own entry: without it `docker import` made /bin 0600, and the task's
        # account (never root) found no `sh` in it.
        bindir = tarfile.TarInfo("bin")
        bindir.type, bindir.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(bindir)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "echo", "id", "ls", "cat", "grep", "sleep"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w") as tar:
        info = tarfile.TarInfo("zf-busybox.tar")
        info.size = len(raw.getvalue())
        tar.addfile(info, io.BytesIO(raw.getvalue()))
    return outer.getvalue()


@pytest.fixture(scope="module")
def docker_worker(api: Api, lab: Lab) -> str:
    """wk2 with the Docker engine on (the lab inventory already allows the lab's images at the zone
    and on the workers: inventory.CONTAINER_IMAGES). wk2 is the lab host made with NET_ADMIN,
    which dockerd's iptables setup needs (lab.DOCKER_HOSTS)."""
    assert DOCKER_WORKER in DOCKER_HOSTS
    run = deploy.run_playbook(lab.workdir / "inventory", lab, "--limit", DOCKER_WORKER,
                              "-e", json.dumps({"worker_docker_enabled": True}))
    assert run.ok, run.first_failure()
    assert lab.hosts[DOCKER_WORKER].container.put_archive("/tmp", _busybox_tar())
    code, out = lab.exec(DOCKER_WORKER, f"docker import --change 'ENV PATH=/bin' /tmp/zf-busybox.tar {IMAGE}")
    assert code == 0, out
    return DOCKER_WORKER


def test_a_container_task_runs_as_a_task_account_with_only_its_directory(api: Api, lab: Lab,
                                                                         docker_worker: str) -> None:
    script = ("id -u; grep CapEff /proc/self/status; echo made > /task/out.txt && echo wrote-task; "
              "ls / | tr '\\n' ' '; echo; grep -c ' /task ' /proc/self/mountinfo")
    task = api.task({"name": "container", "params": {"image": IMAGE, "command": ["sh", "-c", script],
                                                     "pull": "never"}, "target": {"node": docker_worker}})
    done = api.wait(task["id"])
    assert done["state"] == "succeeded", api.log(task["id"])
    lines = api.log(task["id"]).splitlines()
    uid = int(lines[0])
    agent_uid = int(lab.exec(docker_worker, "id -u zonefarm")[1])
    assert uid not in (0, agent_uid) and uid >= 60100, lines
    assert lines[1].split()[-1] == "0000000000000000"  # every capability dropped
    assert "wrote-task" in lines and lines[-1] == "1"  # its own directory, mounted once at /task
    assert "hostroot" not in lines[3]
    assert lab.exec(docker_worker, f"docker ps -a -q --filter name=zonefarm-task-{task['id']}-")[1].strip() == ""
    volumes = api.call("POST", "/tasks", {"name": "container", "target": {"node": docker_worker},
                                          "params": {"image": IMAGE, "volumes": {"/": "/hostroot"}}},
                       expect=(422,))
    assert "volumes" in json.dumps(volumes)


@pytest.fixture(scope="module")
def attacker(api: Api, lab: Lab) -> dict[str, Any]:
    """One attacking task on a systemd worker, next to a victim task: both submitted at once, so
    the attacks cost one dispatch. The attacker prints back each payload of
    tests/security/test_template_injection.py (as arguments, one in its environment), then
    probes the node's key files and the running victim's directories (PROBE of
    test_task_reads_secrets.py). The victim sleeps on and ends by itself."""
    marker = Path("/tmp") / f"zf-injected-{secrets.token_hex(6)}"
    seen = payloads(marker)
    victim = api.task({"name": "shell", "target": {"node": WORKER}, "params": {"argv": [
        "sh", "-c", "echo victim-secret > mine.txt; sleep 60"]}})
    attempt = f"{api.get(f'/nodes/{WORKER}')['workdir']}/tasks/{victim['id']}/1"
    running = f"/var/lib/zonefarm-task-{victim['id']}-1-"
    script = (f'printf "%s\\n--\\n" "$@"; printf "%s" "$ZF_A"; echo; echo "=== probe"; '
              f'i=0; until ls -d {running}* >/dev/null 2>&1 || [ $i -ge 60 ]; do sleep 0.5; i=$((i+1)); done; '
              f'sleep 1; run=$(ls -d {running}* | head -1); '
              f'set -- {CONFIG_DIR}/node.ini {CONFIG_DIR}/upload_ed25519 {attempt}/output.log {attempt}/spec.json '
              f'{attempt} "$run/mine.txt" "$run"; ' + PROBE)
    task = api.task({"name": "shell", "target": {"node": WORKER},
                     "params": {"argv": ["sh", "-c", script, "attack", *seen], "env": {"ZF_A": seen[2]}}})
    done = api.wait(task["id"])
    code, run_dir = lab.exec(WORKER, f"ls -d {running}*")
    assert code == 0, f"the victim's unit ended before the probe was checked: {run_dir}"
    log = api.log(task["id"])
    head, _, probe = log.partition("=== probe\n")
    return {"done": done, "log": log, "head": head, "probe": probe, "seen": seen, "marker": marker,
            "targets": [f"{CONFIG_DIR}/node.ini", f"{CONFIG_DIR}/upload_ed25519", f"{attempt}/output.log",
                        f"{attempt}/spec.json", attempt, f"{run_dir.strip()}/mine.txt", run_dir.strip()]}


def test_templates_in_a_tasks_strings_arrive_as_data(attacker: dict[str, Any], lab: Lab) -> None:
    """Every payload arrives byte for byte; the lookup's marker is made neither on a dispatcher (where
    Ansible would have rendered it), nor on the zone or the worker."""
    assert attacker["done"]["state"] == "succeeded", attacker["log"]
    seen = attacker["seen"]
    assert attacker["head"] == "".join(f"{p}\n--\n" for p in seen) + seen[2] + "\n"
    for host in ("cm1", "cm2", "zone1", WORKER):
        assert lab.exec(host, f"test -e {attacker['marker']}")[0] != 0, f"a param ran a command on {host}"


def test_a_task_reads_neither_the_nodes_secrets_nor_another_tasks_directories(attacker: dict[str, Any],
                                                                            lab: Lab) -> None:
    """The node's key files, the running victim's unit directory and its attempt's log and spec:
    every read refused. Each is there to be read (a refusal is the sandbox's, not a missing file)."""
    for target in attacker["targets"]:
        assert lab.exec(WORKER, f"test -e {target}")[0] == 0, target
        assert f"DENIED {target}" in attacker["probe"], attacker["probe"]
    nodes_secret = lab_secrets(lab)["nodes_secret"]
    for secret in (nodes_secret, derive_node_key(nodes_secret, WORKER), "victim-secret", "PRIVATE KEY"):
        assert secret not in attacker["log"]


def test_a_nul_byte_in_argv_or_env_is_422(api: Api) -> None:
    for params, field in ((({"argv": ["echo", "a\x00b"]}), "params.argv[1]"),
                          ({"argv": ["true"], "env": {"A": "x\x00"}}, "params.env.A")):
        refused = api.call("POST", "/tasks", {"name": "shell", "target": {"node": WORKER}, "params": params},
                           expect=(422,))
        assert f"{field}: holds a NUL byte" in refused["error"]["message"], refused

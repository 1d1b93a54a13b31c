"""The dispatcher checks the workers' SSH host keys; a key that does not match stops that node.

A node here is this machine behind a private sshd on a loopback port (its own host key),
reached by a real ``zonefarm dispatcher`` over SSH. With a known_hosts holding another key
the round fails for that node: it is cordoned with the reason on it, and its task goes back
to the queue with the same reason. With the right key (and the node uncordoned) the task
runs over SSH and the reason is cleared. SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.core.config import Settings
from control.farm.dispatcher.job import ansible_env, host_key_refusal
from tests.conftest import farm_test_settings
from tests.support.farm import ROOT, Farm
from tests.test_dispatch import Sshd

pytestmark = pytest.mark.slow
LEASE = 4


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return farm_test_settings(db_url, tmp_path, LEASE)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path / "sshd")
    yield server
    server.stop()


def _key_line(sshd: Sshd, pub: Path) -> str:
    keytype, key = pub.read_text().split()[:2]
    return f"[127.0.0.1]:{sshd.port} {keytype} {key}\n"


def _ssh(sshd: Sshd, known_hosts: Path) -> str:
    """What ssh says when it checks the host key as the dispatcher's Ansible does."""
    proc = subprocess.run(["ssh", *shlex.split(ansible_env(str(known_hosts))["ANSIBLE_SSH_ARGS"]),
                           "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-i", str(sshd.base / "client_key"),
                           "-p", str(sshd.port), "root@127.0.0.1", "true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    return proc.stderr


def test_the_job_environment_checks_host_keys(tmp_path: Path) -> None:
    env = ansible_env(str(tmp_path / "my known_hosts"))
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    args = shlex.split(env["ANSIBLE_SSH_ARGS"])
    assert "StrictHostKeyChecking=yes" in args
    assert f"UserKnownHostsFile={tmp_path / 'my known_hosts'}" in args  # one argument, space and all


def test_refusal_names_a_changed_and_an_unknown_key(sshd: Sshd, tmp_path: Path) -> None:
    hv = {"ansible_host": "127.0.0.1", "ansible_port": sshd.port}
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(_key_line(sshd, sshd.base / "client_key.pub"))
    changed = host_key_refusal("wk1", hv, _ssh(sshd, wrong), str(wrong))
    assert changed is not None
    assert changed.startswith(f"SSH host key of node wk1 (127.0.0.1:{sshd.port}) has changed: it does not match "
                              f"the dispatcher's known_hosts ({wrong})")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    unknown = host_key_refusal("wk1", hv, _ssh(sshd, empty), str(empty))
    assert unknown is not None and f"(127.0.0.1:{sshd.port}) is not in the dispatcher's known_hosts" in unknown
    assert host_key_refusal("wk1", hv, "ssh: connect to host 127.0.0.1 port 1: Connection refused", "") is None


def _node(farm: Farm, name: str) -> dict[str, Any]:
    resp = farm.api.get(f"/nodes/{name}", token=farm.api.root)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_changed_host_key_cordons_the_node_and_requeues_its_task(farm: Farm, sshd: Sshd, tmp_path: Path) -> None:
    # An SSH session starts from a clean environment: this interpreter, with this checkout's code.
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    farm.add_node("wk1", ansible_connection="ssh", ansible_port=sshd.port, python=str(python))
    known_hosts = tmp_path / "dispatcher_known_hosts"
    known_hosts.write_text(_key_line(sshd, sshd.base / "client_key.pub"))  # someone else's key
    farm.start_dispatcher("d1", ZONEFARM_DISPATCH_KNOWN_HOSTS=str(known_hosts),
                          ANSIBLE_PRIVATE_KEY_FILE=str(sshd.base / "client_key"))
    task = farm.submit("shell", {"argv": ["sh", "-c", "echo over-ssh"]}, target={"node": "wk1"})

    deadline = time.monotonic() + 90
    while not _node(farm, "wk1")["dispatch_error"]:
        assert time.monotonic() < deadline, farm.dispatcher_logs()[-3000:]
        farm.assert_dispatchers_alive()
        time.sleep(0.3)
    node = _node(farm, "wk1")
    expected = (f"SSH host key of node wk1 (127.0.0.1:{sshd.port}) has changed: it does not match the dispatcher's "
                f"known_hosts ({known_hosts})")
    assert node["dispatch_error"].startswith(expected) and node["cordoned"] is True
    assert "uncordon" in node["dispatch_error"]
    back = [e for e in farm.events(task["id"]) if e["from_state"] == "assigned"]
    assert back and back[-1]["to_state"] == "queued", farm.events(task["id"])
    assert back[-1]["reason"] == f"launch failed on node wk1: {node['dispatch_error']}"
    time.sleep(2)  # cordoned: no more rounds try the node, so the task keeps its attempts
    shown = farm.task(task["id"])
    assert shown["state"] == "queued" and len(back) == len(
        [e for e in farm.events(task["id"]) if e["from_state"] == "assigned"])
    assert not list(farm.nodes["wk1"].glob("tasks/*"))  # nothing ran on the impostor

    # the operator checks the host, trusts its real key and uncordons it: the task runs over SSH
    known_hosts.write_text(_key_line(sshd, sshd.base / "host_key.pub"))
    assert farm.api.post("/nodes/wk1/uncordon", token=farm.api.root).status_code == 200
    done = farm.wait(task["id"], timeout=90)
    assert done["state"] == "succeeded" and done["node"] == "wk1", farm.events(task["id"])
    assert farm.log(task["id"]) == "over-ssh\n"
    deadline = time.monotonic() + 30  # the round records what it reached after the job, maybe after the task ended
    while _node(farm, "wk1")["dispatch_error"]:
        assert time.monotonic() < deadline, farm.dispatcher_logs()[-3000:]
        time.sleep(0.2)


def _play(tmp_path: Path, sshd: Sshd, known_hosts: Path, plays: list[dict[str, Any]]) -> str:
    """Run plays with a cluster manager on this machine (local) and a worker behind the private sshd."""
    import json
    import os

    controller_known = tmp_path / "controller_known_hosts"
    controller_known.write_text(_key_line(sshd, sshd.base / "host_key.pub"))
    common = {"common_done": True, "common_user": "root", "common_group": "root",
              "common_config_dir": str(tmp_path / "etc"), "ansible_python_interpreter": sys.executable}
    inventory = {"all": {"vars": common, "children": {
        "cluster_manager": {"hosts": {"cmx": {"ansible_connection": "local"}}},
        "worker": {"hosts": {"wkx": {
            "ansible_host": "127.0.0.1", "ansible_port": sshd.port, "ansible_user": "root",
            "worker_ansible_port": sshd.port, "worker_dispatcher_known_hosts": str(known_hosts),
            "ansible_ssh_private_key_file": str(sshd.base / "client_key"),
            "ansible_ssh_args": f"-o ControlMaster=no -o StrictHostKeyChecking=yes "
                                f"-o UserKnownHostsFile={controller_known}"}}}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(json.dumps(plays))
    (tmp_path / "etc").mkdir(exist_ok=True)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts")}
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i",
                           str(tmp_path / "inventory.json"), str(tmp_path / "play.yml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


def test_roles_write_the_workers_own_host_keys_for_the_dispatcher(sshd: Sshd, tmp_path: Path) -> None:
    """cluster_manager reads each worker's /etc/ssh/ssh_host_*_key.pub over the controller's checked
    SSH connection; the worker role adds its own (site.yml --limit): same file, nothing changes."""
    known_hosts = tmp_path / "etc" / "dispatcher_known_hosts"
    cm_play = {"name": "cm", "hosts": "cluster_manager", "gather_facts": False, "tasks": [{
        "name": "known_hosts", "ansible.builtin.include_role": {"name": "cluster_manager",
                                                                "tasks_from": "known_hosts.yml"}}]}
    worker_play = {"name": "worker", "hosts": "worker", "gather_facts": False, "tasks": [{
        "name": "host keys", "ansible.builtin.include_role": {"name": "worker", "tasks_from": "host_keys.yml"}}]}
    # the worker's keys as the worker reads them (the private sshd runs on this machine)
    expected = {" ".join(p.read_text().split()[:2]) for p in Path("/etc/ssh").glob("ssh_host_*_key.pub")}
    assert expected

    def entries() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for line in known_hosts.read_text().splitlines():
            if line and not line.startswith("#"):
                host, keytype, key = line.split()[:3]
                found.setdefault(host, set()).add(f"{keytype} {key}")
        return found

    _play(tmp_path, sshd, known_hosts, [cm_play])
    assert entries() == {f"[127.0.0.1]:{sshd.port}": expected}
    out = _play(tmp_path, sshd, known_hosts, [cm_play, worker_play])
    assert re.search(r"cmx\s+:.*changed=0", out) and re.search(r"wkx\s+:.*changed=0", out), out
    known_hosts.write_text("# empty\n")  # a cluster manager that missed the worker: the worker role adds it
    _play(tmp_path, sshd, known_hosts, [worker_play])
    assert entries() == {f"[127.0.0.1]:{sshd.port}": expected}

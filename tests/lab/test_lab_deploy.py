"""The deploy: the lab's inventory as an operator keeps it, Ansible over SSH, and site.yml.

Runs after the bare-host tests (see conftest) on the same session lab.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.lab import deploy
from tests.lab.inventory import GROUPS, api_base, ca_file, lab_secrets, vault_password_file, write_inventory
from tests.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


def deploy_marks(test: Callable[..., None]) -> Callable[..., None]:
    """The deploy tests share one fresh site.yml run (the `deployed` fixture), in file order."""
    return pytest.mark.deploy(pytest.mark.slow(pytest.mark.timeout(1800)(test)))


@pytest.fixture(scope="module")
def inventory(lab: Lab) -> Path:
    return write_inventory(lab, lab.workdir / "inventory")


def _ansible(lab: Lab, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(lab.workdir / "facts")}
    return subprocess.run([str(ROOT / ".venv/bin" / tool), *args, "--vault-password-file",
                           str(vault_password_file(lab))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_inventory_has_the_groups_and_no_plaintext_secret(lab: Lab, inventory: Path) -> None:
    proc = _ansible(lab, "ansible-inventory", "-i", str(inventory), "--list")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    for group, names in GROUPS.items():
        expected = sorted(n for n in names if n != "wk3")
        assert sorted(listed[group]["hosts"]) == expected, group
    # wk3 exists as a container but joins the inventory only when an operator adds it.
    assert "wk3" in lab.hosts and "wk3" not in listed["_meta"]["hostvars"]
    assert listed["_meta"]["hostvars"]["cm2"]["ansible_host"] == lab.hosts["cm2"].ip
    vault = inventory / "group_vars/all/vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    everything = "".join(p.read_text() for p in inventory.rglob("*") if p.is_file())
    for name, value in lab_secrets(lab).items():
        assert value not in everything, f"{name} is in the inventory in plaintext"


def test_ansible_reaches_every_host_over_ssh(lab: Lab, inventory: Path) -> None:
    proc = _ansible(lab, "ansible", "all", "-i", str(inventory), "-m", "ansible.builtin.command",
                    "-a", "cat /proc/1/comm", "-o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answered = {line.split(" | ")[0]: line.rsplit(" ", 1)[-1] for line in proc.stdout.splitlines() if " | " in line}
    assert answered == {n: "systemd" for g in GROUPS.values() for n in g if n != "wk3"}


def test_ansible_refuses_a_host_with_another_key(lab: Lab, inventory: Path, tmp_path: Path) -> None:
    """Host key checking stays on: cm1's address presenting cm2's key is refused."""
    code, out = lab.exec("cm2", "cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert code == 0
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lab.hosts['cm1'].ip} {' '.join(out.split()[:2])}\n")
    proc = _ansible(lab, "ansible", "cm1", "-i", str(inventory), "-m", "ansible.builtin.ping",
                    "-e", "ansible_ssh_args='-o StrictHostKeyChecking=yes -o UserKnownHostsFile=" + str(wrong) + "'")
    assert proc.returncode != 0
    assert "UNREACHABLE" in proc.stdout and "HOST IDENTIFICATION HAS CHANGED" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def deployed(lab: Lab, inventory: Path) -> deploy.Run:
    """The fresh `site.yml` run every later test builds on (run once, asserted in the first test)."""
    deploy.wheelhouse()
    run = deploy.run_playbook(inventory, lab)
    print(f"\nfresh site.yml: {run.seconds:.0f}s changed={run.changed()}")
    return run


def _api(lab: Lab, path: str) -> requests.Response:
    root = lab_secrets(lab)["root_secret"]
    return requests.get(f"{api_base(lab)}{path}", headers={"Authorization": f"Bearer {root}"}, timeout=10,
                        verify=str(ca_file(lab)))


def _online_nodes(lab: Lab, wanted: set[str], timeout: float = 120) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        body = _api(lab, "/nodes").json()
        items = body.get("items", body) if isinstance(body, dict) else body
        online = {n["name"] for n in items if n.get("state") == "online"}
        if wanted <= online or time.monotonic() > deadline:
            return online
        time.sleep(2)


DEPLOYED = {n for g in GROUPS.values() for n in g if n != "wk3"}


@deploy_marks
def test_fresh_site_yml_converges(lab: Lab, deployed: deploy.Run) -> None:
    assert deployed.ok, deployed.first_failure()
    assert set(deployed.recap) == DEPLOYED
    assert _api(lab, "/healthz").json()["status"] == "ok"
    assert _online_nodes(lab, {"wk1", "wk2"}) >= {"wk1", "wk2"}
    for name in DEPLOYED:
        code, out = lab.exec(name, "systemctl is-system-running")
        assert out.strip() == "running", f"{name}: {out} {lab.exec(name, 'systemctl --failed --no-legend')[1]}"


@deploy_marks
def test_second_site_yml_changes_nothing(lab: Lab, inventory: Path, deployed: deploy.Run) -> None:
    if not deployed.ok:
        pytest.skip("the fresh deploy failed (reported by test_fresh_site_yml_converges)")
    second = deploy.run_playbook(inventory, lab)
    print(f"\nidempotent re-run: {second.seconds:.0f}s changed={second.changed()}")
    assert second.ok, second.first_failure()
    assert second.changed() == dict.fromkeys(second.recap, 0), second.changed_tasks()


@deploy_marks
def test_new_worker_joins_with_limit(lab: Lab, inventory: Path, deployed: deploy.Run) -> None:
    """The inventory edit: add wk3, run `site.yml --limit wk3`; it registers with the zone."""
    if not deployed.ok:
        pytest.skip("the fresh deploy failed (reported by test_fresh_site_yml_converges)")
    write_inventory(lab, inventory, without=())
    run = deploy.run_playbook(inventory, lab, "--limit", "wk3")
    print(f"\nsite.yml --limit wk3: {run.seconds:.0f}s changed={run.changed()}")
    assert run.ok, run.first_failure()
    assert set(run.recap) == {"wk3"}
    assert "wk3" in _online_nodes(lab, {"wk3"})

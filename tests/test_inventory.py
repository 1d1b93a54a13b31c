"""The node registry as an Ansible dynamic inventory: the API's JSON on both databases, and
the real ``ansible-inventory -i inventory/zonefarm.py`` reading it from the live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control.core.db import connection
from control.farm.dispatcher.inventory import job_hostvars
from control.farm.models import Node
from tests.conftest import NODES_SECRET, ROOT
from tests.support.client import Api
from tests.support.nodes import SignedNode

SCRIPT = ROOT / "inventory" / "zonefarm.py"
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")


@pytest.fixture
def farm(api: Api) -> Api:
    for name, region, queues in (("eu1", "eu-west", ["default", "large"]), ("eu2", "eu-west", ["small"]),
                                 ("us1", "us", ["default"])):
        assert SignedNode(api, name, NODES_SECRET).register(region=region, queues=queues).status_code == 201
    assert api.post("/nodes/eu2/cordon", token=api.root).status_code == 200
    return api


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZONEFARM_")}
    env["ANSIBLE_LOCAL_TEMP"] = env.get("ANSIBLE_LOCAL_TEMP", "/tmp/zf-ansible-local")
    env.update(extra)
    return env


def test_inventory_groups_and_hostvars(farm: Api) -> None:
    inv = farm.get("/inventory", token=farm.root).json()
    assert inv["region_eu_west"]["hosts"] == ["eu1", "eu2"]
    assert inv["region_us"]["hosts"] == ["us1"]
    assert inv["queue_default"]["hosts"] == ["eu1", "us1"]
    assert inv["queue_large"]["hosts"] == ["eu1"] and inv["queue_small"]["hosts"] == ["eu2"]
    assert inv["zonefarm_cordoned"]["hosts"] == ["eu2"]
    assert "queue_default" in inv["all"]["children"]
    hv = inv["_meta"]["hostvars"]["eu1"]
    assert hv["ansible_connection"] == "local" and hv["ansible_python_interpreter"] == "/usr/bin/python3"
    assert hv["zonefarm_queues"] == ["default", "large"] and hv["zonefarm_region"] == "eu-west"
    assert NODES_SECRET not in json.dumps(inv) and "config_path" not in json.dumps(inv)
    _, token = farm.user_with_token("ursula")
    assert farm.get("/inventory", token=token).status_code == 200
    assert farm.delete("/nodes/us1", token=farm.root).status_code == 204
    assert "us1" not in farm.get("/inventory", token=farm.root).json()["_meta"]["hostvars"]


def test_dispatcher_jobs_reach_nodes_as_the_inventory_says(farm: Api) -> None:
    """One rule for how Ansible reaches a node: a job's host has GET /inventory's connection
    variables; a node without a registered interpreter gets the dispatcher's ``auto_silent`` in
    both; a label a node sends (free text) never reaches a job, where Ansible would template it."""
    jinja = "{{ lookup('pipe', 'id') }}"
    assert SignedNode(farm, "eu1", NODES_SECRET).register(region="eu-west", queues=["default", "large"],
                                                        labels={"rack": jinja}).status_code == 200
    with connection():
        Node.update(python="").where(Node.name == "us1").execute()
        nodes = {n.name: n for n in Node.select()}
    served = farm.get("/inventory", token=farm.root).json()["_meta"]["hostvars"]
    assert served["eu1"]["zonefarm_labels"] == {"rack": jinja}
    for name in ("eu1", "us1"):
        job = job_hostvars(nodes[name])
        assert {k: v for k, v in job.items() if k.startswith("ansible_")} == \
            {k: v for k, v in served[name].items() if k.startswith("ansible_")}
        assert job["zonefarm_config_path"] == f"/tmp/zf-{name}/node.ini"
        assert job["zonefarm_workdir"] == served[name]["zonefarm_workdir"] == f"/tmp/zf-{name}/work"
        assert job["zonefarm_batch"] == [] and job["zonefarm_kills"] == []
        assert jinja not in json.dumps(job)
    assert served["us1"]["ansible_python_interpreter"] == "auto_silent"
    assert served["eu1"]["ansible_python_interpreter"] == "/usr/bin/python3"


def test_ansible_inventory_reads_the_dynamic_inventory(farm: Api) -> None:
    env = _env(ZONEFARM_URL=farm.base + "/api/v1", ZONEFARM_TOKEN=farm.root)
    out = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(SCRIPT), "--list"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    inv = json.loads(out.stdout)
    assert sorted(inv["queue_default"]["hosts"]) == ["eu1", "us1"]
    assert sorted(inv["region_eu_west"]["hosts"]) == ["eu1", "eu2"]
    assert inv["_meta"]["hostvars"]["us1"]["zonefarm_region"] == {"__ansible_unsafe": "us"}  # data, not a template
    graph = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(SCRIPT), "--graph", "queue_large"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert graph.returncode == 0 and "eu1" in graph.stdout and "us1" not in graph.stdout
    assert farm.root not in out.stdout + out.stderr + graph.stdout + graph.stderr


def test_script_host_mode_and_ini_file(farm: Api, tmp_path: Path) -> None:
    ini = tmp_path / "inventory.ini"
    ini.write_text(f"[zonefarm]\nurl = {farm.base}\ntoken = {farm.root}\n")
    os.chmod(ini, 0o644)
    env = _env(ZONEFARM_INVENTORY_INI=str(ini))
    refused = subprocess.run([sys.executable, str(SCRIPT), "--list"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "chmod 600" in refused.stderr and farm.root not in refused.stderr
    os.chmod(ini, 0o600)
    host = subprocess.run([sys.executable, str(SCRIPT), "--host", "eu1"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert host.returncode == 0, host.stderr
    assert json.loads(host.stdout)["zonefarm_queues"] == [{"__ansible_unsafe": "default"},
                                                          {"__ansible_unsafe": "large"}]


def test_a_nodes_label_is_never_a_template_on_the_operators_controller(farm: Api, tmp_path: Path) -> None:
    """A node's registration is free text; a play over the dynamic inventory shows it as it is
    (Ansible trusts inventory scripts, so without the unsafe marks this ran ``id`` here)."""
    jinja = "{{ lookup('pipe', 'id') }}"
    assert SignedNode(farm, "eu1", NODES_SECRET).register(region="eu-west", queues=["default", "large"],
                                                        labels={"rack": jinja}).status_code == 200
    play = tmp_path / "show.yml"
    play.write_text("- hosts: eu1\n  gather_facts: false\n  tasks:\n"
                    "    - ansible.builtin.debug:\n        msg: \"rack={{ zonefarm_labels.rack }}\"\n")
    env = _env(ZONEFARM_URL=farm.base + "/api/v1", ZONEFARM_TOKEN=farm.root)
    out = subprocess.run([str(ANSIBLE_INVENTORY.with_name("ansible-playbook")), "-i", str(SCRIPT), str(play)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rack=" + jinja in out.stdout and "uid=" not in out.stdout, out.stdout


def test_script_errors_are_clear_and_never_print_the_token(farm: Api) -> None:
    secret_looking = "wrong-token-that-must-not-be-printed"
    env = _env(ZONEFARM_URL=farm.base + "/api/v1", ZONEFARM_TOKEN=secret_looking)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--list"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr
    assert secret_looking not in bad.stdout + bad.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), "--list"], env=_env(), capture_output=True,
                             text=True, timeout=60, cwd="/")
    assert missing.returncode == 1 and "ZONEFARM_URL" in missing.stderr

"""The edge roles' argument specs: they cover every default, and bad input fails naming the variable.

Validation runs through Ansible's own ``validate_argument_spec`` with each role's
``meta/argument_specs.yml``, the same check Ansible inserts at the start of the role.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("provider", "worker", "nfs_server", "storage_mount", "zone", "cluster_manager")
pytestmark = pytest.mark.deploy


def spec(role: str, entry: str = "main") -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return data["argument_specs"][entry]["options"]


def defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_spec_covers_every_default_and_readme_lists_it(role: str) -> None:
    options = spec(role)
    assert set(defaults(role)) <= set(options), "defaults without a spec"
    undocumented = [name for name, opt in options.items() if not opt.get("required") and name not in defaults(role)]
    assert not undocumented, f"spec options with no default: {undocumented}"
    readme = (ROOT / "roles" / role / "README.md").read_text()
    missing = [name for name in options if f"`{name}`" not in readme]
    assert not missing, f"README does not list {missing}"
    role_vars = ROOT / "roles" / role / "vars" / "main.yml"
    private = yaml.safe_load(role_vars.read_text()) if role_vars.exists() else {}
    assert all(name.startswith("_") for name in private or {}), "role vars must be private (_ prefix)"


def validate(role: str, provided: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "validate.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Validate", "hosts": "localhost", "gather_facts": False,
        # what the role's and the common role's defaults provide to the specs' templated defaults
        # (less those taken from a site-wide zonefarm_* var with no default, which this inventory
        # does not set)
        "vars": {**{k: v for k, v in defaults(role).items()
                    if "{{ zonefarm_" not in str(v) or "| default(" in str(v)},
                 "common_user": "zonefarm", "common_group": "zonefarm", "common_config_dir": "/etc/zonefarm",
                 "common_data_dir": "/var/lib/zonefarm", "common_venv": "/opt/zonefarm/venv",
                 "common_prefix": "/opt/zonefarm", "role_path": str(ROOT / "roles" / role),
                 "common_ca_src": "/controller/pki/ca.pem", "common_ca_file": "/etc/zonefarm/ca.pem",
                 # the site-wide secrets the zone spec's defaults name (group_vars/all in a real inventory)
                 "zonefarm_root_secret": "site-root-secret-0", "zonefarm_nodes_secret": "site-nodes-secret-0"},
        "tasks": [{"name": "Validate", "ansible.builtin.validate_argument_spec": {
            "argument_spec": spec(role), "provided_arguments": provided}}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    return subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(playbook)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return json.dumps(result.get("argument_errors") or result.get("msg"))


SECRET = "s3cret-s3cret-s3cret"


@pytest.mark.parametrize("role, provided, names", [
    ("worker", {"worker_zone_url": "http://zone", "worker_nodes_secret": SECRET, "worker_concurrency": "many"},
     ["worker_concurrency"]),
    ("worker", {"worker_zone_url": "http://zone"}, ["worker_nodes_secret"]),
    ("worker", {"worker_zone_url": "http://zone", "worker_nodes_secret": SECRET, "worker_queues": {"a": 1}},
     ["worker_queues"]),
    ("provider", {"provider_zone_url": "http://zone", "provider_root_secret": SECRET, "provider_sftp_port": "x"},
     ["provider_sftp_port"]),
    ("provider", {"provider_root_secret": SECRET}, ["provider_zone_url"]),
    ("storage_mount", {"storage_fstype": "ext4"}, ["storage_fstype"]),
    ("storage_mount", {"storage_mounts": [{"src": "h:/x", "fstype": "nfs"}]}, ["path"]),
    ("nfs_server", {"nfs_server_implementation": "knfs"}, ["nfs_server_implementation"]),
    ("nfs_server", {"nfs_exports": [{"clients": "*"}]}, ["path", "nfs_exports"]),
    ("zone", {"zone_root_secret": SECRET, "zone_task_memory_mb_max": "lots"}, ["zone_task_memory_mb_max"]),
    ("zone", {"zone_root_secret": SECRET, "zone_task_cpus_default": "one"}, ["zone_task_cpus_default"]),
    ("zone", {"zone_retention_feed_days": "a quarter"}, ["zone_retention_feed_days"]),
    ("zone", {"zone_metrics_token": SECRET, "zone_retention_tasks_days": [30]}, ["zone_retention_tasks_days"]),
    ("cluster_manager", {"cluster_manager_retention_tokens_days": "week"}, ["cluster_manager_retention_tokens_days"]),
    ("cluster_manager", {"cluster_manager_prune_interval": "hourly"}, ["cluster_manager_prune_interval"]),
    ("cluster_manager", {"cluster_manager_dispatch_regions": {"eu": 1}}, ["cluster_manager_dispatch_regions"]),
])
def test_bad_input_fails_naming_the_variable(role: str, provided: dict[str, Any], names: list[str],
                                             tmp_path: Path) -> None:
    message = failure(validate(role, provided, tmp_path))
    for name in names:
        assert name in message, message
    assert SECRET not in message


def test_zone_retention_and_metrics_token_pass_and_stay_secret(tmp_path: Path) -> None:
    proc = validate("zone", {"zone_metrics_token": SECRET, "zone_retention_tasks_days": 14,
                             "zone_retention_logs_days": 2.5, "zone_retention_feed_days": "60",
                             "zone_retention_tokens_days": 1}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert SECRET not in proc.stdout  # no_log in the spec


def test_good_input_passes(tmp_path: Path) -> None:
    proc = validate("worker", {"worker_zone_url": "http://zone", "worker_nodes_secret": SECRET,
                               "worker_queues": ["small", "large"], "worker_concurrency": 4}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]


def _check_and_render(tmp_path: Path, role: str, check: str, template: str, given: dict[str, object],
                      site_vars: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """A role's check (``tasks/<check>``), then its config ``templates/<template>`` rendered into
    tmp_path (as the template's name without .j2) with the role's defaults and ``given`` over them."""
    base = ROOT / "roles" / role
    playbook = tmp_path / f"{role}.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": f"{role} check and config", "hosts": "localhost", "gather_facts": False,
        "vars": {**site_vars, "common_config_dir": str(tmp_path), "common_data_dir": str(tmp_path / "data"),
                 "common_ca_src": "", "common_ca_file": ""},
        # the role's defaults without its dependencies (role common would install things);
        # block vars stand for the operator's, above the defaults
        "vars_files": [str(base / "defaults" / "main.yml")],
        "tasks": [{"name": role, "vars": given, "block": [
            {"name": "Check", "ansible.builtin.include_tasks": str(base / "tasks" / check)},
            {"name": "Config", "ansible.builtin.template": {
                "src": str(base / "templates" / template),
                "dest": str(tmp_path / template.removesuffix(".j2")), "mode": "0600"}}]}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    return subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _zone_limits_play(tmp_path: Path, **limits: object) -> subprocess.CompletedProcess[str]:
    """The zone role's limits check, then its zonefarm.ini rendered into tmp_path."""
    return _check_and_render(tmp_path, "zone", "limits.yml", "zonefarm.ini.j2", limits,
                             {"zonefarm_root_secret": SECRET, "zonefarm_nodes_secret": SECRET[::-1]})


def test_zone_task_limits_reach_the_settings(tmp_path: Path) -> None:
    """zone_task_* land in zonefarm.ini under the names the API reads (an unknown name stops it)."""
    from control.core.config import load_settings

    done = _zone_limits_play(tmp_path, zone_task_memory_mb_max=4096, zone_task_cpus_default=0.5,
                             zone_task_processes_default=64, zone_task_processes_max=100)
    assert done.returncode == 0, done.stdout[-3000:]
    settings = load_settings(tmp_path / "zonefarm.ini", env={})
    assert (settings.task_memory_mb_default, settings.task_memory_mb_max) == (2048, 4096)
    assert (settings.task_cpus_default, settings.task_cpus_max) == (0.5, 8.0)
    assert (settings.task_processes_default, settings.task_processes_max) == (64, 100)


def test_zone_task_default_above_its_maximum_fails_naming_both(tmp_path: Path) -> None:
    refused = _zone_limits_play(tmp_path, zone_task_cpus_default=9.0)
    assert refused.returncode != 0
    assert "zone_task_cpus_default must be above 0 and at most zone_task_cpus_max" in refused.stdout, \
        refused.stdout[-3000:]
    assert not (tmp_path / "zonefarm.ini").exists()
    assert SECRET not in refused.stdout


def test_zone_metrics_token_and_retention_reach_the_settings(tmp_path: Path) -> None:
    """zone_metrics_token and zone_retention_* land in zonefarm.ini under the names the API reads;
    the site-wide zonefarm_retention_* is their default."""
    from control.core.config import load_settings

    done = _zone_limits_play(tmp_path, zone_metrics_token="metrics-token-0123456789", zone_retention_tasks_days=14,
                             zone_retention_logs_days=2.5, zonefarm_retention_feed_days=45)
    assert done.returncode == 0, done.stdout[-3000:]
    settings = load_settings(tmp_path / "zonefarm.ini", env={})
    assert settings.metrics_token == "metrics-token-0123456789"
    assert (settings.retention_tasks_days, settings.retention_logs_days) == (14.0, 2.5)
    assert (settings.retention_feed_days, settings.retention_tokens_days) == (45.0, 7.0)


def _dispatcher_ini_play(tmp_path: Path, **given: object) -> subprocess.CompletedProcess[str]:
    """The cluster_manager role's region check, then its dispatcher.ini rendered into tmp_path."""
    return _check_and_render(tmp_path, "cluster_manager", "regions.yml", "dispatcher.ini.j2", given,
                             {"common_prefix": str(tmp_path)})


def test_cluster_manager_regions_reach_the_dispatcher_or_fail_naming_the_variable(tmp_path: Path) -> None:
    from control.core.config import load_settings

    done = _dispatcher_ini_play(tmp_path, cluster_manager_dispatch_regions=["eu-west", "eu.north"],
                                cluster_manager_dispatch_region_lease=12.5)
    assert done.returncode == 0, done.stdout[-3000:]
    settings = load_settings(tmp_path / "dispatcher.ini", env={})
    assert settings.dispatch_region_names == ("eu-west", "eu.north") and settings.dispatch_region_lease == 12.5
    (tmp_path / "dispatcher.ini").unlink()
    refused = _dispatcher_ini_play(tmp_path, cluster_manager_dispatch_regions=["eu", "us east"])
    assert refused.returncode != 0 and "cluster_manager_dispatch_regions: us east is not a region name" in \
        " ".join(refused.stdout.split()), refused.stdout[-3000:]
    assert not (tmp_path / "dispatcher.ini").exists()

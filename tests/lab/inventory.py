"""Write the lab's Ansible inventory: the file an operator would keep for these nine hosts.

`inventory/lab/` (git-ignored: addresses and keys change with every lab) holds `hosts.yml`,
`group_vars/` shaped like `inventory/example/`, and the secrets in an ansible-vault file
whose password file sits next to the lab's SSH key (0600). Differences from a real site,
each forced by this machine:

- storage is sshfs over FUSE (`storage_fstype: fuse.sshfs`): the kernel has no NFS client;
- zone1 also carries the `database` group: one PostgreSQL for both cluster managers;
- the SSH host keys were read out of the containers through the Docker engine, so host key
  checking stays on (`ansible_ssh_args` names that known_hosts file).

As on a real site the zone serves HTTPS with a certificate from the site CA, which the roles
make on the controller, here in the lab's workdir (`pki/`, so each lab has its own). Tests
on this machine check the zone against that CA (`ca_file`); workers and providers check it
against the copy the roles install, and the dispatchers check the workers' SSH host keys.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.lab.lab import STORAGE_EXPORT, Lab

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "inventory" / "lab"
API_PORT = 8700
# The groups each lab host belongs to in the inventory (lab.HOSTS says which containers exist).
GROUPS: dict[str, tuple[str, ...]] = {
    "zone": ("zone1",),
    "database": ("zone1",),
    "cluster_manager": ("cm1", "cm2"),
    "storage": ("storage1",),
    "provider": ("prov1", "prov2"),
    "worker": ("wk1", "wk2", "wk3"),
}
# wk3 sits in its own region, so a region task (wk1, wk2) and a broadcast (all three) differ. Its
# tasks run in the pool of task accounts; wk1 and wk2 run them as systemd DynamicUser units
# (worker_sandbox_backend auto, systemd is PID 1): the lab sees both sandbox backends.
HOST_VARS: dict[str, dict[str, str]] = {"wk3": {"worker_region": "edge", "worker_sandbox_backend": "pool"}}
# Leases shorter than the defaults (60 s), so the fault tests (test_lab_faults.py) see a dead
# worker's task requeued in seconds; heartbeats must come well inside the node lease.
NODE_LEASE = 15
TASK_LEASE = 15
LAB_HEARTBEAT = 4
# Images a container task may name, at the zone and on the workers: the lab's own, imported on the
# Docker worker from this machine's busybox (test_lab_sandbox: no registry is reachable).
CONTAINER_IMAGES = ("zonefarm-lab/*",)
# Tasks a lab worker runs at once: the API-kill fault runs 200 tasks through two workers.
WORKER_CONCURRENCY = 8


def _dump(path: Path, data: Any, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\n# {header}\n" + yaml.safe_dump(data, sort_keys=False))


def _subnet(lab: Lab) -> str:
    lab.network.reload()
    return lab.network.attrs["IPAM"]["Config"][0]["Subnet"]


def vault_password_file(lab: Lab) -> Path:
    return lab.workdir / "vault-password"


def ca_file(lab: Lab) -> Path:
    """The site CA's certificate the roles made for this lab: what every client checks the zone with."""
    return lab.workdir / "pki" / "ca.pem"


def api_base(lab: Lab) -> str:
    """The zone's API as this machine reaches it (the certificate names zone1's address too)."""
    return f"https://{lab.hosts['zone1'].ip}:{API_PORT}/api/v1"


def write_inventory(lab: Lab, dest: Path = DEFAULT_DIR, without: tuple[str, ...] = ("wk3",)) -> Path:
    """Write hosts.yml, group_vars and the vault for `lab`; hosts in `without` are left out
    (wk3 joins later, in the inventory-edit step). Returns the inventory directory."""
    dest.mkdir(parents=True, exist_ok=True)
    subnet = _subnet(lab)
    ssh_args = ("-o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=yes "
                f"-o UserKnownHostsFile={lab.known_hosts}")
    children: dict[str, Any] = {}
    for group, names in GROUPS.items():
        hosts = {n: {"ansible_host": lab.hosts[n].ip, **HOST_VARS.get(n, {})}
                 for n in names if n in lab.hosts and n not in without}
        children[group] = {"hosts": hosts}
    _dump(dest / "hosts.yml", {"all": {
        "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_ssh_private_key_file": str(lab.key), "ansible_ssh_args": ssh_args},
        "children": children}},
        f"The zonefarm lab (run {lab.run_id}), written by tests/lab/inventory.py: "
        "ansible-playbook -i inventory/lab site.yml --vault-password-file <lab>/vault-password")
    group_vars = dest / "group_vars"
    _dump(group_vars / "all" / "vars.yml", {
        "zonefarm_zone_url": f"https://zone1:{API_PORT}",
        "common_site_ca_dir": str(lab.workdir / "pki"),
        "zonefarm_root_secret": "{{ vault_zonefarm_root_secret }}",
        "zonefarm_nodes_secret": "{{ vault_zonefarm_nodes_secret }}",
        "zonefarm_database_password": "{{ vault_zonefarm_database_password }}",
        "zonefarm_database_url":
            "postgresql://zonefarm:{{ zonefarm_database_password | urlencode }}@zone1:5432/zonefarm",
        "common_service_manager": "auto",
    }, "Site-wide settings (docs/deploy-contract.md); secrets come from vault.yml.")
    _write_vault(lab, group_vars / "all" / "vault.yml")
    storage = {"storage_ip": "storage1", "storage_fstype": "fuse.sshfs", "storage_mountpoint": STORAGE_EXPORT,
               "storage_mount_remote_path": STORAGE_EXPORT, "storage_mount_sshfs_authorize_on": "storage1"}
    _dump(group_vars / "storage.yml", {"nfs_exports": [
        {"path": STORAGE_EXPORT, "clients": subnet, "options": "rw,sync,no_subtree_check,no_root_squash"}]},
        "storage1 serves the export with nfs-ganesha (user space: this kernel has no NFS server).")
    _dump(group_vars / "provider.yml", storage, "Providers mount the storage with sshfs (no NFS client here).")
    # As in inventory/example: the dispatchers run the tasks over SSH as the service account.
    _dump(group_vars / "worker.yml", {**storage, "worker_docker_enabled": False, "common_user_shell": "/bin/sh",
                                      "worker_heartbeat_interval": LAB_HEARTBEAT,
                                      "worker_concurrency": WORKER_CONCURRENCY,
                                      "worker_container_images": list(CONTAINER_IMAGES)},
          "Workers mount the same storage. Docker stays off; test_lab_sandbox switches it on for wk2 "
          "(lab.DOCKER_HOSTS), which runs the lab's own images.")
    _dump(group_vars / "database.yml", {"database_allowed_clients": ["127.0.0.1/32", subnet]},
          "PostgreSQL on zone1 admits the lab network.")
    _dump(group_vars / "zone.yml", {"zone_listen": f"0.0.0.0:{API_PORT}",
                                    "zone_container_images": list(CONTAINER_IMAGES),
                                    "zone_extra_settings": {"node_lease": NODE_LEASE, "task_lease": TASK_LEASE}},
          "The API serves HTTPS on the lab network and admits container tasks of the lab's own images "
          "(the zone checks first, then the worker); short leases keep the fault tests quick.")
    # The reaper runs in the dispatchers: they decide when a silent node or task is lost.
    _dump(group_vars / "cluster_manager.yml", {"cluster_manager_task_lease": TASK_LEASE,
                                               "cluster_manager_extra_settings": {"node_lease": NODE_LEASE}},
          "Short leases (default 60 s) so a dead worker's task is requeued within seconds in the fault tests.")
    return dest


def _write_vault(lab: Lab, path: Path) -> None:
    """The lab's secrets, encrypted as an operator's would be; made once per lab and kept."""
    password = vault_password_file(lab)
    if not password.exists():
        password.touch(mode=0o600)
        password.write_text(secrets.token_urlsafe(32) + "\n")
    if path.exists() and path.read_text().startswith("$ANSIBLE_VAULT") and (lab.workdir / "secrets.yml").exists():
        return
    values = {f"vault_zonefarm_{name}": secrets.token_urlsafe(24)
              for name in ("root_secret", "nodes_secret", "database_password")}
    plain = lab.workdir / "secrets.yml"
    plain.touch(mode=0o600)
    plain.write_text(yaml.safe_dump(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ROOT / ".venv/bin/ansible-vault"), "encrypt", "--vault-password-file", str(password),
                    "--output", str(path), str(plain)], check=True, capture_output=True,
                   env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    path.chmod(0o600)


def lab_secrets(lab: Lab) -> dict[str, str]:
    """The plaintext secrets (kept 0600 in the lab's workdir) for tests that call the API."""
    data = yaml.safe_load((lab.workdir / "secrets.yml").read_text())
    return {k.removeprefix("vault_zonefarm_"): v for k, v in data.items()}

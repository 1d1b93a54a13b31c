"""The storage roles on real systemd containers over SSH: nfs-ganesha exports, sshfs mounts in fstab.

Two lab hosts only (storage1 and wk1), deployed by ``ansible-playbook`` exactly as an operator
would. This machine's kernel has no NFS (server or client), so the export is served by
nfs-ganesha and proved with libnfs's user-space client, and the worker mounts the same
directory over sshfs (FUSE), which the kernel does have.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.lab import image as lab_image
from tests.lab.lab import Lab
from tests.support.dockerd import ensure_docker

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.deploy, pytest.mark.slow,
              pytest.mark.timeout(900)]

PLAY = """\
- name: Storage
  hosts: storage
  become: true
  roles:
    - role: nfs_server
- name: Mounts
  hosts: worker
  become: true
  roles:
    - role: storage_mount
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    ensure_docker()
    the_lab = Lab(lab_image.build(), tmp_path_factory.mktemp("storage-lab"))
    try:
        the_lab.start(["storage1", "wk1"])
        yield the_lab
    finally:
        the_lab.stop()


def write_inventory(lab: Lab, path: Path, exports: list[dict[str, str]]) -> None:
    ssh_args = " ".join(a for a in lab.ssh_args() if a not in ("-i", str(lab.key)))
    host_vars = {name: {"ansible_host": host.ip} for name, host in lab.hosts.items()}
    inventory = {"all": {
        "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(lab.key),
                 "ansible_ssh_common_args": ssh_args, "ansible_python_interpreter": "/usr/bin/python3"},
        "children": {
            "storage": {"hosts": {"storage1": host_vars["storage1"]},
                        "vars": {"nfs_exports": exports}},
            "worker": {"hosts": {"wk1": host_vars["wk1"]},
                       "vars": {"storage_ip": "storage1", "storage_fstype": "fuse.sshfs",
                                "storage_mountpoint": "/mnt/storage", "storage_mount_remote_path": "/srv/storage",
                                "storage_mount_sshfs_authorize_on": "storage1"}},
        }}}
    path.write_text(yaml.safe_dump(inventory))


def deploy(lab: Lab, exports: list[dict[str, str]]) -> dict[str, int]:
    """Run the play; return changed counts per host from the recap."""
    inventory = lab.workdir / "inventory.yml"
    write_inventory(lab, inventory, exports)
    playbook = lab.workdir / "storage.yml"
    playbook.write_text(PLAY)
    try:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_FACT_CACHING": "memory", "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
        proc = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inventory), str(playbook)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        playbook.unlink()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    recap = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", proc.stdout, re.M)}
    assert set(recap) == {"storage1", "wk1"}, proc.stdout[-3000:]
    return recap


def sh(lab: Lab, host: str, command: str) -> str:
    code, out = lab.exec(host, command)
    assert code == 0, f"{host}: {command}: {out}"
    return out


def test_overlayfs_export_is_refused_by_name(lab: Lab) -> None:
    # A container's root is overlayfs: ganesha's VFS FSAL gets no file handles there.
    with pytest.raises(AssertionError) as info:
        deploy(lab, [{"path": "/srv/on-overlay", "clients": "*"}])
    assert "nfs_exports: /srv/on-overlay is on overlay" in str(info.value)


def test_ganesha_export_and_sshfs_mount(lab: Lab) -> None:
    # The exports live on tmpfs, standing in for the storage host's disk (see the test above).
    for path in ("/srv/storage", "/srv/other"):
        sh(lab, "storage1", f"mkdir -p {path} && (mountpoint -q {path} || mount -t tmpfs tmpfs {path})")
    exports = [{"path": "/srv/storage", "clients": "*"}]
    first = deploy(lab, exports)
    assert first["storage1"] > 0 and first["wk1"] > 0

    # ganesha serves the directory: the user-space NFS client lists a file created on storage1.
    sh(lab, "storage1", "echo hello > /srv/storage/from-storage.txt")
    listing = sh(lab, "wk1", "nfs-ls 'nfs://storage1/srv/storage?version=4'")
    assert "from-storage.txt" in listing

    # The worker mounts the same directory over sshfs, and the mount is in fstab.
    mounts = sh(lab, "wk1", "findmnt -n -o FSTYPE,SOURCE /mnt/storage")
    assert "fuse.sshfs" in mounts and "storage1:/srv/storage" in mounts
    fstab = sh(lab, "wk1", "cat /etc/fstab")
    assert re.search(r"^root@storage1:/srv/storage\s+/mnt/storage\s+fuse.sshfs\s+\S*_netdev", fstab, re.M)
    sh(lab, "wk1", "echo written-on-wk1 > /mnt/storage/from-wk1.txt")
    assert sh(lab, "storage1", "cat /srv/storage/from-wk1.txt").strip() == "written-on-wk1"

    # Idempotent: the second run changes nothing on either host.
    assert deploy(lab, exports) == {"storage1": 0, "wk1": 0}

    # A new export is served after the reload handler, without a restart of the mount.
    sh(lab, "storage1", "echo x > /srv/other/second.txt")
    third = deploy(lab, [*exports, {"path": "/srv/other", "clients": ["10.0.0.0/8", "172.16.0.0/12",
                                                                         "192.168.0.0/16"],
                                    "options": "ro,no_root_squash"}])
    assert third["storage1"] > 0 and third["wk1"] == 0
    config = sh(lab, "storage1", "cat /etc/ganesha/zonefarm.conf")
    assert "Access_Type = RO;" in config and "Path = \"/srv/other\";" in config
    listing = sh(lab, "wk1", "nfs-ls 'nfs://storage1/srv/other?version=4'")
    assert "second.txt" in listing


def test_bad_exports_fail_naming_the_variable(lab: Lab) -> None:
    inventory = lab.workdir / "bad.yml"
    write_inventory(lab, inventory, [{"path": "/srv/storage"}])
    data = yaml.safe_load(inventory.read_text())
    data["all"]["children"]["storage"]["vars"]["nfs_exports"] = [{"clients": "*"}]
    inventory.write_text(yaml.safe_dump(data))
    playbook = lab.workdir / "bad-storage.yml"
    playbook.write_text(textwrap.dedent(PLAY).split("- name: Mounts")[0])
    try:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FACT_CACHING": "memory"}
        proc = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inventory), str(playbook)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        playbook.unlink()
    assert proc.returncode != 0
    assert "nfs_exports" in proc.stdout and "path" in proc.stdout

"""Shared storage in the lab, without the roles: what the kernel here can and cannot do.

This machine's kernel has neither an NFS server nor an NFS client. So storage1 serves NFSv4
from user space (nfs-ganesha, VFS backend) and a user-space client (libnfs-utils) proves the
export from another host; the mounts providers and workers use are sshfs over FUSE, which
the kernel does have. The roles (`nfs_server`, `storage_mount`) do the same through Ansible;
these tests prove that the lab's hosts give them what they need (capabilities, /dev/fuse, a
volume with file handles).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.lab import STORAGE_EXPORT, Lab

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.timeout(900)]

GANESHA_CONF = f"""\
NFS_CORE_PARAM {{ Protocols = 4; Enable_NLM = false; Enable_RQUOTA = false; }}
NFSv4 {{ Graceless = true; }}
EXPORT {{
    Export_Id = 1; Path = "{STORAGE_EXPORT}"; Pseudo = "{STORAGE_EXPORT}";
    Protocols = 4; Transports = TCP; Access_Type = RW; Squash = No_Root_Squash;
    FSAL {{ Name = VFS; }}
}}
"""
URL = f"nfs://storage1{STORAGE_EXPORT}"


def sh(lab: Lab, host: str, command: str) -> str:
    return lab.ssh(host, command).stdout


@pytest.fixture
def ganesha(lab: Lab) -> Iterator[None]:
    """nfs-ganesha on storage1 as a transient systemd unit, stopped afterwards so the
    nfs_server role finds port 2049 free."""
    sh(lab, "storage1", f"cat > /etc/ganesha/lab-test.conf <<'EOF'\n{GANESHA_CONF}EOF\n"
                        "systemd-run --unit=lab-ganesha --collect -p RuntimeDirectory=ganesha /usr/bin/ganesha.nfsd -F "
                        "-f /etc/ganesha/lab-test.conf -L /var/log/lab-ganesha.log -p /run/ganesha/lab.pid")
    try:
        # Ready once the export answers a user-space client.
        sh(lab, "wk2", f"for i in $(seq 60); do nfs-ls '{URL}?version=4' >/dev/null 2>&1 && exit 0; "
                       "sleep 0.5; done; exit 1")
        yield
    finally:
        lab.ssh("storage1", "systemctl stop lab-ganesha; rm -f /etc/ganesha/lab-test.conf", check=False)


def test_ganesha_export_read_and_written_by_a_user_space_client(lab: Lab, ganesha: None) -> None:
    sh(lab, "storage1", f"echo from-storage1 > {STORAGE_EXPORT}/hello.txt")
    listing = sh(lab, "wk2", f"nfs-ls '{URL}?version=4'")
    assert "hello.txt" in listing
    assert sh(lab, "wk2", f"nfs-cp '{URL}/hello.txt?version=4' /tmp/hello.txt >/dev/null && cat /tmp/hello.txt") \
        == "from-storage1\n"
    sh(lab, "wk2", f"echo from-wk2 > /tmp/up.txt && nfs-cp /tmp/up.txt '{URL}/up.txt?version=4'")
    assert sh(lab, "storage1", f"cat {STORAGE_EXPORT}/up.txt") == "from-wk2\n"
    # And it really is served by ganesha in user space, not by a kernel server.
    assert sh(lab, "storage1", "systemctl is-active lab-ganesha; test -e /proc/fs/nfsd/threads || echo no-knfsd") \
        == "active\nno-knfsd\n"


def test_sshfs_mount_from_a_worker(lab: Lab) -> None:
    # wk1's own key, authorized on storage1; storage1's host key as the engine read it.
    pub = sh(lab, "wk1", "test -f /root/.ssh/lab_sshfs || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/lab_sshfs; "
                         "cat /root/.ssh/lab_sshfs.pub").strip()
    sh(lab, "storage1", f"grep -qxF '{pub}' /root/.ssh/authorized_keys || echo '{pub}' >> /root/.ssh/authorized_keys")
    hostkey = next(line.split(" ", 1)[1] for line in lab.known_hosts.read_text().splitlines()
                   if line.startswith(f"{lab.hosts['storage1'].ip} "))
    sh(lab, "wk1", f"echo 'storage1 {hostkey}' > /root/.ssh/lab_known_hosts")
    mount = "/mnt/lab-sshfs"
    try:
        sh(lab, "wk1", f"mkdir -p {mount} && sshfs -o IdentityFile=/root/.ssh/lab_sshfs "
                       "-o UserKnownHostsFile=/root/.ssh/lab_known_hosts -o StrictHostKeyChecking=yes "
                       f"-o reconnect root@storage1:{STORAGE_EXPORT} {mount}")
        assert sh(lab, "wk1", f"findmnt -n -o FSTYPE {mount}").strip() == "fuse.sshfs"
        sh(lab, "wk1", f"echo from-wk1 > {mount}/from-wk1.txt")
        assert sh(lab, "storage1", f"cat {STORAGE_EXPORT}/from-wk1.txt") == "from-wk1\n"
        sh(lab, "storage1", f"echo from-storage1 > {STORAGE_EXPORT}/back.txt")
        assert sh(lab, "wk1", f"cat {mount}/back.txt") == "from-storage1\n"
    finally:
        lab.ssh("wk1", f"fusermount3 -u {mount} || umount -l {mount}", check=False)
        lab.ssh("storage1", f"rm -f {STORAGE_EXPORT}/from-wk1.txt {STORAGE_EXPORT}/back.txt", check=False)

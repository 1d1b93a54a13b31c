"""The nine lab hosts: systemd as PID 1, sshd reachable with the lab key, one project network,
and a teardown that leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.lab.lab import FUSE_GROUPS, HOSTS, LABEL, Lab

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.timeout(900)]


def _run(lab: Lab, name: str, command: str) -> str:
    client = lab.paramiko(name)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=30)
        out = stdout.read().decode()
        assert stdout.channel.recv_exit_status() == 0, f"{name}: {command}: {stderr.read().decode()}"
        return out
    finally:
        client.close()


@pytest.mark.parametrize("name", list(HOSTS))
def test_host_runs_systemd_and_answers_ssh(lab: Lab, name: str) -> None:
    out = _run(lab, name, "hostname; cat /proc/1/comm; systemctl is-system-running --wait || true; "
                          "systemctl is-active ssh; test -c /dev/fuse && echo fuse || echo nofuse")
    hostname, pid1, state, ssh, fuse = out.split()
    assert hostname == name
    assert pid1 == "systemd"
    # "degraded" would mean a unit failed at boot: the image must boot clean.
    assert state == "running", _run(lab, name, "systemctl --failed --no-legend")
    assert ssh == "active"
    assert fuse == ("fuse" if FUSE_GROUPS & set(HOSTS[name]) else "nofuse")


def test_hosts_reach_each_other_by_name(lab: Lab) -> None:
    out = _run(lab, "wk1", "for h in zone1 cm1 storage1 prov2; do getent hosts $h; done")
    resolved = {line.split()[1]: line.split()[0] for line in out.splitlines()}
    assert resolved == {h: lab.hosts[h].ip for h in ("zone1", "cm1", "storage1", "prov2")}
    _run(lab, "wk1", f"ping -c1 -W2 storage1 >/dev/null && ping -c1 -W2 {lab.hosts['zone1'].ip} >/dev/null")


def test_unknown_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    """The SSH helpers check host keys: a key the engine did not vouch for is rejected."""
    import paramiko

    other = Lab(lab.image, tmp_path)
    other.hosts = lab.hosts
    (tmp_path / "id_ed25519").symlink_to(lab.key)
    # cm1's key as another host presents it: same address, different key.
    code, out = lab.exec("cm2", "cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert code == 0
    other.known_hosts.write_text(f"{lab.hosts['cm1'].ip} {' '.join(out.split()[:2])}\n")
    try:
        with pytest.raises(paramiko.BadHostKeyException):
            other.paramiko("cm1")
    finally:
        other.client.close()


def test_teardown_leaves_nothing(lab_image_tag: str, tmp_path: Path) -> None:
    """A lab of its own (two hosts): a host cut off comes back on its address; after stop(),
    no container, volume or network of it is left."""
    small = Lab(lab_image_tag, tmp_path)
    client = docker.from_env()
    try:
        small.start(["storage1", "wk1"])
        ip = small.hosts["wk1"].ip
        small.disconnect("wk1")
        assert small.ssh("wk1", "true", check=False, timeout=30).returncode == 255
        assert small.exec("storage1", "ping -c1 -W1 wk1")[0] != 0
        small.reconnect("wk1")
        assert small.ssh("wk1", "hostname -I", timeout=30).stdout.split() == [ip]
        selector = {"label": f"{LABEL}={small.run_id}"}
        assert len(client.containers.list(filters=selector)) == 2
        volumes = {m["Name"] for m in small.hosts["storage1"].container.attrs["Mounts"]
                   if m["Type"] == "volume"}
        assert volumes, "storage1 keeps its export on a volume"
    finally:
        small.stop()
    try:
        assert client.containers.list(all=True, filters=selector) == []
        assert client.networks.list(filters=selector) == []
        assert not volumes & {v.name for v in client.volumes.list()}
    finally:
        client.close()

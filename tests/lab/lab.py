"""The lab's lifecycle: a project network, nine systemd hosts reachable over SSH, teardown.

Everything the lab creates carries the label ``zonefarm.lab=<run id>`` so a leftover from a
crashed run can be found and removed (`make lab-clean`, `python -m tests.lab.lab clean`).
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import paramiko
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import IPAMConfig, IPAMPool, Mount

LABEL = "zonefarm.lab"
PREFIX = "zflab"
# Host name -> the inventory groups it belongs to. wk3 is created with the others but
# joins the inventory only in the inventory-edit test.
HOSTS: dict[str, tuple[str, ...]] = {
    "zone1": ("zone",),
    "cm1": ("cluster_manager",),
    "cm2": ("cluster_manager",),
    "prov1": ("provider",),
    "prov2": ("provider",),
    "wk1": ("worker",),
    "wk2": ("worker",),
    "wk3": ("worker",),
    "storage1": ("storage",),
}
FUSE_GROUPS = {"provider", "worker"}
# The worker test_lab_sandbox switches Docker on for (worker_docker_enabled). dockerd inside a
# lab host needs NET_ADMIN: without it `iptables -t nat -N DOCKER` is refused ("Permission
# denied (you must be root)") and the daemon exits. The capability is scoped to the host's own
# network namespace. Its storage driver falls back to vfs by itself (overlay on the host's
# overlay root is refused), which is slow but fine for the lab's one-binary image.
DOCKER_HOSTS = {"wk2"}
# Where storage1 keeps the data it exports: a Docker volume, because nfs-ganesha's VFS
# backend needs file handles (open_by_handle_at) that the overlay root filesystem refuses.
STORAGE_EXPORT = "/srv/zonefarm"


def _systemd_host_config(name: str, groups: tuple[str, ...]) -> dict:
    """Flags checked on this machine for systemd as PID 1 (`--privileged` fails here)."""
    fuse = bool(FUSE_GROUPS & set(groups))
    config: dict = {
        "cap_add": ["SYS_ADMIN"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "cgroupns": "host",
        "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        "tmpfs": {"/run": "rw,exec", "/run/lock": "rw"},
        "command": "/lib/systemd/systemd",
        "environment": {"container": "docker"},
        "stop_signal": "SIGRTMIN+3",
    }
    if fuse:
        config["devices"] = ["/dev/fuse:/dev/fuse:rwm"]
    if name in DOCKER_HOSTS:
        config["cap_add"].append("NET_ADMIN")
    if "storage" in groups:
        # open_by_handle_at, which the VFS backend of nfs-ganesha serves every request with.
        config["cap_add"].append("DAC_READ_SEARCH")
        config["mounts"] = [Mount(STORAGE_EXPORT, None, type="volume")]
    return config


@dataclass
class Host:
    name: str
    groups: tuple[str, ...]
    container: Container
    ip: str = ""


@dataclass
class Lab:
    """One run of the lab; `start()` brings it up, `stop()` removes all of it."""

    image: str
    workdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = docker.from_env(timeout=120)
        self.network_name = f"{PREFIX}-{self.run_id}"
        self.network = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def key(self) -> Path:
        return self.workdir / "id_ed25519"

    def start(self, names: Iterable[str] = HOSTS) -> Lab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            f"zonefarm-lab-{self.run_id}", "-f", str(self.key)], check=True)
        try:
            self._create(names)
            self.wait_ssh()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, names: Iterable[str]) -> None:
        labels = {LABEL: self.run_id}
        self.network = self._create_network(labels)
        for name in names:
            groups = HOSTS[name]
            container = self.client.containers.create(
                self.image, name=f"{PREFIX}-{self.run_id}-{name}", hostname=name,
                labels=labels, network=self.network_name, detach=True,
                **_systemd_host_config(name, groups))
            # The network alias makes the short host name resolve inside the network.
            self.network.disconnect(container)
            self.network.connect(container, aliases=[name])
            self._authorize(container)
            container.start()
            self.hosts[name] = Host(name, groups, container)
        for host in self.hosts.values():
            host.container.reload()
            host.ip = host.container.attrs["NetworkSettings"]["Networks"][
                self.network_name]["IPAddress"]

    def _create_network(self, labels: dict[str, str]) -> Network:
        """A bridge on a subnet the engine picked as free, then pinned: only a network with a
        configured subnet lets a host cut off by `disconnect()` come back on its old address."""
        probe = self.client.networks.create(self.network_name, driver="bridge", labels=labels)
        try:
            probe.reload()
            pool = probe.attrs["IPAM"]["Config"][0]
        finally:
            probe.remove()
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=pool["Subnet"], gateway=pool.get("Gateway"))])
        return self.client.networks.create(self.network_name, driver="bridge", labels=labels, ipam=ipam)

    def _authorize(self, container: Container) -> None:
        pub = (self.key.with_suffix(".pub")).read_bytes()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            ssh = tarfile.TarInfo("root/.ssh")
            ssh.type, ssh.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(ssh)
            keys = tarfile.TarInfo("root/.ssh/authorized_keys")
            keys.size, keys.mode = len(pub), 0o600
            tar.addfile(keys, io.BytesIO(pub))
        container.put_archive("/", buf.getvalue())

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    def _learn_host_key(self, host: Host) -> bool:
        """Read the host's SSH key through the engine (a trusted channel) into known_hosts."""
        code, out = self.exec(host.name, "cat /etc/ssh/ssh_host_ed25519_key.pub")
        if code != 0:
            return False
        keytype, key = out.split()[:2]
        lines = [line for line in (self.known_hosts.read_text().splitlines() if self.known_hosts.exists() else [])
                 if line.split(" ", 1)[0] not in (host.ip, host.name)]
        lines.append(f"{host.ip} {keytype} {key}")
        self.known_hosts.write_text("\n".join(lines) + "\n")
        return True

    def wait_ssh(self, timeout: float = 120, names: Iterable[str] | None = None) -> None:
        """Wait until every host's sshd answers a real login (not just an open port)."""
        deadline = time.time() + timeout
        pending = {name: self.hosts[name] for name in (names or self.hosts)}
        while pending:
            for name, host in list(pending.items()):
                if self._port_open(host.ip) and self._learn_host_key(host) \
                        and self.ssh(name, "true", check=False).returncode == 0:
                    del pending[name]
            if pending and time.time() > deadline:
                raise TimeoutError(f"sshd never answered on {sorted(pending)}")
            if pending:
                time.sleep(1)

    @staticmethod
    def _port_open(ip: str, port: int = 22) -> bool:
        try:
            with socket.create_connection((ip, port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        remove(self.run_id, self.client)
        self.client.close()

    # -- using the hosts ----------------------------------------------------------------------
    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "LogLevel=ERROR",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]

    def ssh(self, name: str, command: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host over SSH, as the operator's Ansible does."""
        return subprocess.run(["ssh", *self.ssh_args(), f"root@{self.hosts[name].ip}", command],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def paramiko(self, name: str, timeout: float = 10) -> paramiko.SSHClient:
        """An SSH session to a host with the lab key: what Ansible's paramiko transport would open."""
        client = paramiko.SSHClient()
        # Strict: the host key must be the one the engine read out of the container.
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.hosts[name].ip, username="root", key_filename=str(self.key),
                       timeout=timeout, allow_agent=False, look_for_keys=False)
        return client

    def exec(self, name: str, command: str) -> tuple[int, str]:
        """Run a command through the engine: works even when the host is cut off."""
        code, out = self.hosts[name].container.exec_run(["sh", "-c", command])
        return code, out.decode(errors="replace")

    def disconnect(self, name: str) -> None:
        self.network.disconnect(self.hosts[name].container)

    def reconnect(self, name: str) -> None:
        host = self.hosts[name]
        self.network.connect(host.container, aliases=[name], ipv4_address=host.ip)

    def start_again(self, name: str) -> None:
        """Start a stopped (or killed) host on its old address. The engine hands out addresses
        in turn, so a plain `docker start` moves the host; but a worker registered its address
        with the zone, and the lab's known_hosts and inventory name addresses too."""
        host = self.hosts[name]
        host.container.reload()
        if host.container.status == "running":
            return
        if self.network_name in host.container.attrs["NetworkSettings"]["Networks"]:
            self.network.disconnect(host.container)
        self.network.connect(host.container, aliases=[name], ipv4_address=host.ip)
        host.container.start()


def remove(run_id: str | None = None, client: docker.DockerClient | None = None) -> int:
    """Remove the containers and networks of one run, or of every run when run_id is None."""
    own = client is None
    client = client or docker.from_env(timeout=120)
    selector = f"{LABEL}={run_id}" if run_id else LABEL
    removed = 0
    try:
        for container in client.containers.list(all=True, filters={"label": selector}):
            container.remove(force=True, v=True)
            removed += 1
        for network in client.networks.list(filters={"label": selector}):
            network.remove()
            removed += 1
    finally:
        if own:
            client.close()
    return removed


def main() -> int:
    parser = argparse.ArgumentParser(description="Manage the zonefarm lab")
    parser.add_argument("action", choices=["clean"])
    parser.parse_args()
    print(f"removed {remove()} lab containers and networks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

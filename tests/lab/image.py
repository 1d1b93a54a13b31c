"""Build the lab's base image locally: no image registry is reachable from this machine.

The image is a debootstrapped Debian 12 with systemd, sshd and every Debian package the
roles install, so the roles' apt tasks find them already there and the lab needs no
network beyond its own. It is tagged with a digest of the package list and of this file,
so a change to either rebuilds it and an unchanged build is skipped.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
REPO = "zonefarm-lab"
SUITE = "bookworm"

# What debootstrap installs: enough to boot systemd and be reached over SSH.
BASE_PACKAGES = (
    "python3", "python3-venv", "openssh-server", "sudo", "systemd", "systemd-sysv",
    "iproute2", "procps", "ca-certificates", "curl", "dbus",
)
# What the roles (and the lab's own checks) need on the hosts. The roles' own package lists
# are added by `role_packages()`.
EXTRA_PACKAGES = (
    "nfs-ganesha", "nfs-ganesha-vfs", "rpcbind", "libnfs-utils", "sshfs", "fuse3", "rsync",
    "python3-apt", "acl", "sqlite3", "supervisor", "iputils-ping", "less", "postgresql",
)
# Bump when the files `_configure` writes change: the package list alone would not rebuild.
RECIPE = 3
# Survives between builds: the debootstrap rootfs tarball and apt's downloaded .debs, so a
# change to the package list costs one `apt-get install`, not a fresh debootstrap.
CACHE = Path(os.environ.get("ZONEFARM_LAB_CACHE", "/var/cache/zonefarm-lab"))
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def _mirror() -> str:
    """The Debian mirror apt is configured with here (the only one reachable)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and words[1].rstrip("/").endswith("/debian"):
                return words[1]
            if words[:1] == ["deb"] and SUITE in words and words[-1] == "main":
                url = next(w for w in words[1:] if "://" in w)
                if url.rstrip("/").endswith("/debian"):
                    return url
    return "http://deb.debian.org/debian"


def _literal_names(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [i for i in items if isinstance(i, str) and _PACKAGE_NAME.match(i)]


def _walk_apt(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("apt", "ansible.builtin.apt", "package", "ansible.builtin.package") \
                    and isinstance(value, dict):
                found += _literal_names(value.get("name") or value.get("pkg"))
            else:
                found += _walk_apt(value)
    elif isinstance(node, list):
        for item in node:
            found += _walk_apt(item)
    return found


def role_packages(roles: Path = ROOT / "roles") -> set[str]:
    """Debian packages the roles name literally: apt tasks and `*_packages` defaults."""
    found: set[str] = set()
    for path in sorted(roles.glob("*/defaults/main.yml")) + sorted(roles.glob("*/vars/*.yml")):
        data = yaml.safe_load(path.read_text()) or {}
        for key, value in data.items() if isinstance(data, dict) else ():
            if key.endswith("_packages"):
                found.update(_literal_names(value))
    for path in sorted(roles.glob("*/tasks/*.yml")):
        try:
            found.update(_walk_apt(yaml.safe_load(path.read_text())))
        except yaml.YAMLError:
            continue
    # docker-ce is not in Debian; the roles' apt tasks would need Docker's own repository.
    return {p for p in found if p not in {"docker-ce"}}


def packages() -> list[str]:
    return sorted(set(BASE_PACKAGES) | set(EXTRA_PACKAGES) | role_packages())


def _digest(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def tag() -> str:
    """The image tag: a digest of the package list (and of RECIPE, bumped when `_configure` changes)."""
    return f"{REPO}:{_digest(str(RECIPE), SUITE, *packages())}"


def base_tarball() -> Path:
    """Where the debootstrapped minbase rootfs is cached: it depends on BASE_PACKAGES only."""
    return CACHE / f"debootstrap-{SUITE}-{_digest(SUITE, _mirror(), *sorted(BASE_PACKAGES))}.tar"


# Files written into the image: a fresh SSH host key per container, no gettys, and a
# journald that stays small.
_HOSTKEY_UNIT = """\
[Unit]
Description=Generate this container's own SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
_JOURNALD = "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n"


_ROLE_OWNED_UNITS = ("nfs-ganesha.service", "rpcbind.service", "rpcbind.socket", "postgresql.service",
                     "supervisor.service", "nfs-client.target", "systemd-timesyncd.service",
                     "docker.service", "docker.socket", "containerd.service")
_KERNEL_NFS_UNITS = ("proc-fs-nfsd.mount", "run-rpc_pipefs.mount", "rpc-statd.service",
                     "rpc-statd-notify.service", "nfs-blkmap.service", "rpc-gssd.service",
                     "rpc-svcgssd.service", "nfs-idmapd.service", "nfs-mountd.service", "nfs-server.service")
_CONSOLE_UNITS = ("getty.target", "console-getty.service", "systemd-logind.service")


def _chroot(root: Path, *cmd: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8"}
    # apt's progress goes nowhere; its errors still reach stderr.
    subprocess.run(["chroot", str(root), *cmd], check=True, env=env, stdout=subprocess.DEVNULL)


def _configure(root: Path) -> None:
    (root / "etc/systemd/system/ssh-hostkeys.service").write_text(_HOSTKEY_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "ssh-hostkeys.service"
    if not link.exists():
        link.symlink_to("/etc/systemd/system/ssh-hostkeys.service")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    conf = root / "etc/systemd/journald.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "lab.conf").write_text(_JOURNALD)
    # Services the packages enable but the roles own: they start them when configured.
    units = [u for u in _ROLE_OWNED_UNITS if any((root / d / u).exists() for d in ("lib/systemd/system",
                                                                                  "etc/systemd/system"))]
    _chroot(root, "systemctl", "disable", "--quiet", *units)
    # Units that need the kernel's NFS (absent here) or a real console: they would fail at boot.
    _chroot(root, "systemctl", "mask", "--quiet", *_KERNEL_NFS_UNITS, *_CONSOLE_UNITS)
    (root / "etc/machine-id").write_text("")
    sshd = root / "etc/ssh/sshd_config.d"
    sshd.mkdir(parents=True, exist_ok=True)
    (sshd / "lab.conf").write_text("PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                                   "UseDNS no\n")


def _apt_sources(root: Path, mirror: str) -> None:
    """Point the image's apt at the same mirror and apt settings this machine uses."""
    (root / "etc/apt/sources.list").write_text(
        f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n")
    conf = root / "etc/apt/apt.conf.d"
    # The mirror may be a dated snapshot: its Release files are past Valid-Until.
    (conf / "99zonefarm-lab").write_text(
        'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n'
        'Acquire::Languages "none";\nAcquire::GzipIndexes "true";\n'
        'APT::Install-Recommends "false";\n')


def _debootstrap(mirror: str) -> Path:
    """Return the cached minbase rootfs tarball, running debootstrap only when it is missing."""
    tarball = base_tarball()
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="zonefarm-lab-debootstrap-", dir="/var/tmp"))
    try:
        root = work / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(sorted(BASE_PACKAGES))}",
                        SUITE, str(root), mirror], check=True, stdout=subprocess.DEVNULL)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
                       check=True)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def _prune(client: object, keep: str, min_age: float = 3600) -> None:
    """Drop the images of older package lists. One still used by a container stays, and so does
    one younger than an hour: a concurrent run may have just built it and not started it yet."""
    import docker

    for old in client.images.list(name=REPO):
        created = datetime.fromisoformat(old.attrs["Created"][:19]).replace(tzinfo=UTC)
        if keep not in old.tags and (datetime.now(UTC) - created).total_seconds() > min_age:
            try:
                client.images.remove(old.id)
            except docker.errors.APIError:
                pass


def build(force: bool = False) -> str:
    """Build the image unless its tag exists; return the tag."""
    import docker

    name = tag()
    client = docker.from_env()
    CACHE.mkdir(parents=True, exist_ok=True)
    # One build at a time on this machine: concurrent test runs share the apt cache and the tag.
    lock = open(CACHE / "build.lock", "w")  # noqa: SIM115 - held until the finally below
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force:
            try:
                client.images.get(name)
                return name
            except docker.errors.ImageNotFound:
                pass
        mirror = _mirror()
        tarball = _debootstrap(mirror)
        extra = [p for p in packages() if p not in BASE_PACKAGES]
        archives = CACHE / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="zonefarm-lab-image-", dir="/var/tmp"))
        root = work / "rootfs"
        root.mkdir()
        mounts: list[Path] = []
        try:
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-xpf", str(tarball)],
                           check=True)
            _apt_sources(root, mirror)
            policy = root / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            for source, target, args in (("proc", root / "proc", ["-t", "proc"]),
                                         (str(archives), root / "var/cache/apt/archives", ["--bind"])):
                subprocess.run(["mount", *args, source, str(target)], check=True)
                mounts.append(target)
            shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
            _chroot(root, "apt-get", "update", "-qq")
            _chroot(root, "apt-get", "install", "-y", "-qq", "-o", "Dpkg::Use-Pty=0", *extra)
            for target in reversed(mounts):
                subprocess.run(["umount", str(target)], check=True)
            mounts.clear()
            policy.unlink()
            for cache in ("usr/share/doc", "usr/share/man", "usr/share/locale"):
                shutil.rmtree(root / cache, ignore_errors=True)
            (root / "etc/resolv.conf").write_text("")
            _configure(root)
            tar = subprocess.Popen(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-c", "."],
                                   stdout=subprocess.PIPE)
            subprocess.run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]',
                            "-c", "ENV container=docker", "-", name],
                           stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
            if tar.wait() != 0:
                raise RuntimeError("tar of the lab rootfs failed")
            _prune(client, keep=name)
        finally:
            for target in reversed(mounts):
                subprocess.run(["umount", "-l", str(target)], check=False)
            # Never delete through a mount that is still there: it is the shared .deb cache.
            if not any(os.path.ismount(target) for target in mounts):
                shutil.rmtree(work, ignore_errors=True)
        return name
    finally:
        lock.close()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    parser.add_argument("--print-tag", action="store_true", help="print the tag and exit")
    args = parser.parse_args()
    if args.print_tag:
        print(tag())
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.support.dockerd import ensure_docker

    ensure_docker()
    print(build(force=args.force))
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())

"""Transfer throughput: zonefarm's transfer program against a plain rsync of the same tree.

Both run on this machine between loopback sshd servers, in the same run, alternating:

* zonefarm: ``control.node.tasktypes.transfer.run`` (what a ``transfer`` task runs on a provider
  host), a ``replicate`` from a chrooted SFTP account on the source sshd to a chrooted SFTP
  account on the target sshd, every file hashed on the way and read back on the target;
* baseline: ``rsync -a --whole-file`` of the same tree over ssh into a shell account of a third
  sshd, the way an operator copies between two provider hosts.

Each run copies into an empty target. The figure is MiB/s (tree bytes / wall time); the ratio is
zonefarm / rsync of the medians. Usage: ``.venv/bin/python bench/transfer.py --runs 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from control.node.tasktypes.transfer import Counters, run
from tests.support.sshd import Sshd

MIB = 1 << 20


def storage(base: Path, name: str) -> Path:
    """A directory sshd may chroot to: root-owned all the way up, not world-writable."""
    root = base / name
    root.mkdir(mode=0o755)
    return root


def make_tree(root: Path, big: int, small: int) -> int:
    total = 0
    for i in range(big):
        data = os.urandom(32 * MIB)
        (root / "tree" / "big").mkdir(parents=True, exist_ok=True)
        (root / "tree" / "big" / f"f{i}.bin").write_bytes(data)
        total += len(data)
    for i in range(small):
        data = os.urandom(16 * 1024)
        (root / "tree" / "small" / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (root / "tree" / "small" / f"d{i % 10}" / f"s{i}.dat").write_bytes(data)
        total += len(data)
    return total


def timed_zonefarm(src: Sshd, dst: Sshd, dst_root: Path) -> float:
    shutil.rmtree(dst_root / "1", ignore_errors=True)
    plan = {"transfer": 1, "kind": "replicate", "space_id": 1, "path": "tree", "space": "bench",
            "source": {"provider": "src", "sftp_host": "127.0.0.1", "sftp_port": src.port, "sftp_user": "root"},
            "target": {"provider": "dst", "sftp_host": "127.0.0.1", "sftp_port": dst.port, "sftp_user": "root",
                       "size": 1 << 50, "used": 0}}
    started = time.monotonic()
    run(plan, Counters({"attempt": 1}, 1))
    return time.monotonic() - started


def timed_rsync(src_tree: Path, dst: Sshd, dst_dir: Path) -> float:
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir()
    ssh = (f"ssh -p {dst.port} -i {dst.base / 'client_key'} -o UserKnownHostsFile={dst.base / 'known_hosts'} "
           "-o StrictHostKeyChecking=yes -o BatchMode=yes")
    started = time.monotonic()
    subprocess.run(["rsync", "-a", "--whole-file", "-e", ssh, f"{src_tree}/", f"root@127.0.0.1:{dst_dir}/"],
                   check=True)
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", type=int, default=8, help="32 MiB files")
    ap.add_argument("--small", type=int, default=500, help="16 KiB files")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="zonefarm-bench-transfer-", dir="/var/lib"))
    base.chmod(0o755)
    servers: list[Sshd] = []
    try:
        src_root, dst_root = storage(base, "src"), storage(base, "dst")
        total = make_tree(src_root / "1", args.big, args.small)
        src = Sshd(base / "sshd-src", chroot=src_root)
        servers.append(src)
        key = (src.base / "client_key.pub").read_text().strip()
        dst = Sshd(base / "sshd-dst", chroot=dst_root, authorized=[key])
        servers.append(dst)
        plain = Sshd(base / "sshd-plain")  # a shell account: rsync runs on the far side
        servers.append(plain)
        known = base / "known_hosts"
        known.write_text((src.base / "known_hosts").read_text() + (dst.base / "known_hosts").read_text())
        os.environ["ZONEFARM_SSH_KEY"] = str(src.base / "client_key")
        os.environ["ZONEFARM_KNOWN_HOSTS"] = str(known)
        os.environ.pop("ZONEFARM_NODE_CONFIG", None)
        ours, theirs = [], []
        for i in range(args.runs):
            ours.append(timed_zonefarm(src, dst, dst_root))
            theirs.append(timed_rsync(src_root / "1" / "tree", plain, base / "rsync-dst"))
            print(f"run {i + 1}: zonefarm {ours[-1]:.2f} s, rsync {theirs[-1]:.2f} s", flush=True)
        z, r = statistics.median(ours), statistics.median(theirs)
        result: dict[str, Any] = {
            "bytes": total, "files": args.big + args.small, "runs": args.runs,
            "zonefarm_s": ours, "rsync_s": theirs,
            "zonefarm_mib_s": round(total / MIB / z, 1), "rsync_mib_s": round(total / MIB / r, 1),
            "ratio": round(r / z, 3), "load": os.getloadavg()[0]}
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

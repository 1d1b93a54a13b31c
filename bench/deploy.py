"""Deployment benchmark: a fresh local deploy of the zone and the cluster manager, then a re-run.

Deploys ``playbooks/zone.yml`` and ``playbooks/cluster_manager.yml`` with
``inventory/local.yml`` into a throwaway root on a free loopback port, the way
``tests/test_deploy.py`` does, and times:

* fresh:   everything from nothing (venv from the wheelhouse, services started, API healthy);
* re-run:  the same command again (must report changed=0);
* baseline: ``ansible-playbook`` of a one-task play on the same host, i.e. Ansible's own
  start-up cost, so the ratios say how much the roles add on this (noisy, shared) machine.

Each is repeated ``--runs`` times (fresh runs each get a new root) and the medians printed.

    .venv/bin/python bench/deploy.py [--runs 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def _env(root: Path, listen: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZONEFARM_", "ANSIBLE_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", ANSIBLE_NOCOLOR="1",
               ZONEFARM_LOCAL_ROOT=str(root), ZONEFARM_LOCAL_LISTEN=listen)
    return env


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return elapsed, done.stdout


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    for script in ("scripts/install-collections.sh", "scripts/build-wheelhouse.sh"):
        subprocess.run([script], cwd=ROOT, check=True, capture_output=True)
    fresh, rerun, base = [], [], []
    with tempfile.TemporaryDirectory(prefix="zf-bench-deploy-") as tmp:
        secrets_file = Path(tmp) / "secrets.yml"
        secrets_file.write_text(f"zonefarm_root_secret: {secrets.token_hex(20)}\n"
                                f"zonefarm_nodes_secret: {secrets.token_hex(20)}\n")
        secrets_file.chmod(0o600)
        noop = Path(tmp) / "noop.yml"
        noop.write_text("- hosts: localhost\n  gather_facts: true\n  tasks:\n"
                        "    - ansible.builtin.command: /bin/true\n      changed_when: false\n")
        for i in range(args.runs):
            root = Path(tmp) / f"root{i}"
            env = _env(root, f"127.0.0.1:{_port()}")
            play = [str(BIN / "ansible-playbook"), "-i", "inventory/local.yml", "playbooks/zone.yml",
                    "playbooks/cluster_manager.yml", "--extra-vars", f"@{secrets_file}"]
            try:
                seconds, _ = _timed(play, env)
                fresh.append(seconds)
                seconds, out = _timed(play, env)
                rerun.append(seconds)
                changed = sum(int(n) for n in re.findall(r"changed=(\d+)", out))
                if changed:
                    sys.exit(f"re-run reported changed={changed}")
                seconds, _ = _timed([str(BIN / "ansible-playbook"), "-i", "inventory/local.yml", str(noop)], env)
                base.append(seconds)
            finally:
                subprocess.run(["scripts/down.sh"], cwd=ROOT, env=env, capture_output=True, check=False)
    result = {"runs": args.runs, "fresh_s": statistics.median(fresh), "rerun_s": statistics.median(rerun),
              "baseline_s": statistics.median(base)}
    result["fresh_ratio"] = result["fresh_s"] / result["baseline_s"]
    result["rerun_ratio"] = result["rerun_s"] / result["baseline_s"]
    print(f"deploy (zone + cluster_manager, local, median of {args.runs}): fresh {result['fresh_s']:.1f} s, "
          f"re-run {result['rerun_s']:.1f} s (changed=0), one-task baseline {result['baseline_s']:.1f} s; "
          f"fresh/baseline {result['fresh_ratio']:.1f}x, re-run/baseline {result['rerun_ratio']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

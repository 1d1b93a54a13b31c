"""Drive `ansible-playbook -i inventory/lab site.yml` against the lab, as an operator would.

Each run is timed (wall clock) and its PLAY RECAP parsed, so tests can assert on changed
counts and `make lab` can print the figures BENCHMARKS.md records. Run it by hand with

    .venv/bin/python -m tests.lab.deploy [--keep] [--twice]

which builds the image, starts the lab, writes inventory/lab, deploys, and tears down.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab.inventory import DEFAULT_DIR, vault_password_file, write_inventory  # noqa: E402
from tests.lab.lab import HOSTS, Lab  # noqa: E402

_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                    r"\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


@dataclass
class Run:
    """One ansible-playbook run: exit code, wall time, recap per host, and its output."""

    argv: list[str]
    returncode: int
    seconds: float
    output: str
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(r["failed"] == 0 and r["unreachable"] == 0
                                            for r in self.recap.values())

    def changed(self) -> dict[str, int]:
        return {host: r["changed"] for host, r in self.recap.items()}

    def changed_tasks(self) -> dict[str, list[str]]:
        """Task name -> hosts it reported `changed` on: what keeps a re-run from being a no-op."""
        found: dict[str, list[str]] = {}
        task = ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line[6:line.rfind("]")]
            elif line.startswith("changed: ["):
                found.setdefault(task, []).append(line[10:line.index("]")])
        return found

    def first_failure(self) -> str:
        """Where the run stopped: the first failed task and host, for a readable assertion."""
        for block in re.split(r"\n(?=TASK \[)", self.output):
            if re.search(r"^(fatal|failed): \[", block, re.M):
                return block[:3000]
        return self.output[-3000:]


def run_playbook(inventory: Path, lab: Lab, *args: str, playbook: str = "site.yml",
                 timeout: float = 1800) -> Run:
    """Run a playbook from the repository root with the project's ansible.cfg."""
    venv_bin = ROOT / ".venv" / "bin"
    argv = [str(venv_bin / "ansible-playbook"), "-i", str(inventory), playbook,
            "--vault-password-file", str(vault_password_file(lab)), *args]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1", "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
           # Facts are cached per lab: a previous lab's hosts had the same names, other addresses.
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(lab.workdir / "facts")}
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    recap = {m.group(1): dict(zip(("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored"),
                                  map(int, m.groups()[1:]), strict=True))
             for m in _RECAP.finditer(proc.stdout)}
    return Run(argv, proc.returncode, seconds, output, recap)


def wheelhouse() -> None:
    """What an operator runs before deploying: the hosts install from it with no package index."""
    subprocess.run(["scripts/build-wheelhouse.sh"], cwd=ROOT, check=True,
                   env={**os.environ, "VENV": str(ROOT / ".venv")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the lab running (remove it with "
                        "`python -m tests.lab.lab clean`)")
    parser.add_argument("--twice", action="store_true", help="run site.yml a second time (idempotence)")
    parser.add_argument("--inventory", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    from tests.lab.image import build
    from tests.support.dockerd import ensure_docker

    ensure_docker()
    image = build()
    wheelhouse()
    workdir = Path(tempfile.mkdtemp(prefix="zonefarm-lab-"))
    lab = Lab(image, workdir)
    rc = 1
    try:
        started = time.monotonic()
        lab.start([n for n in HOSTS if n != "wk3"])
        print(f"lab {lab.run_id}: {len(lab.hosts)} hosts up in {time.monotonic() - started:.0f}s ({workdir})")
        inventory = write_inventory(lab, args.inventory)
        runs = [("fresh site.yml", run_playbook(inventory, lab))]
        if args.twice and runs[0][1].ok:
            runs.append(("idempotent re-run", run_playbook(inventory, lab)))
        for label, run in runs:
            print(f"{label}: rc={run.returncode} {run.seconds:.0f}s changed={run.changed()}")
            if not run.ok:
                print(run.first_failure())
        rc = 0 if all(run.ok for _, run in runs) else 1
    finally:
        if args.keep:
            print(f"lab {lab.run_id} kept; inventory in {args.inventory}")
        else:
            lab.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

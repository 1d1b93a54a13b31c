"""Lab deployment benchmark: fresh site.yml, idempotent re-run, --limit of a new worker, and the floor.

Each run starts a lab of its own (tests/lab: nine systemd containers, SSH with checked host
keys, the inventory an operator would keep, wk3 left out of it) and times, in order:

* fresh:    ``site.yml`` on the eight bare hosts (the base image already built);
* re-run:   ``site.yml`` again, which must report changed=0 on every host and restart no service
  (the start time of every zonefarm and PostgreSQL unit, read before and after, is the same);
* limit:    wk3 added to the inventory, ``site.yml --limit wk3``;
* baseline: one trivial task (``command: /bin/true``) over the same nine hosts, facts cached:
  Ansible's own floor on this machine (fork, SSH, module transfer), so the ratios compare
  runs made under different loads.

The measured runs have the ``profile_tasks`` and ``profile_roles`` callbacks on (through
``ANSIBLE_CALLBACKS_ENABLED``, not ansible.cfg) and their whole output is saved under
``--out`` (``run<N>-<step>.log``), to see where the time goes. The lab is removed after each
run, also on failure; only this run's containers and network (its own run id) are touched.

    .venv/bin/python bench/lab_deploy.py [--runs 3] [--out /tmp/lab-bench] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab.deploy import Run, run_playbook, wheelhouse  # noqa: E402
from tests.lab.inventory import write_inventory  # noqa: E402
from tests.lab.lab import HOSTS, Lab  # noqa: E402

STEPS = ("fresh", "rerun", "limit", "baseline")
BASELINE_PLAY = """---
- name: One trivial task over every host (Ansible's own floor)
  hosts: all
  gather_facts: true
  tasks:
    - name: Run true
      ansible.builtin.command: /bin/true
      changed_when: false
"""


def _checked(step: str, run: Run, out: Path) -> float:
    """The run's wall time; exits naming the failure (its log is kept) when it did not do its job."""
    out.write_text(run.output)
    if not run.ok:
        sys.exit(f"{step} failed (log {out}):\n{run.first_failure()}")
    if step in ("rerun", "baseline") and any(run.changed().values()):
        sys.exit(f"{step} was not a no-op: {run.changed_tasks()} (log {out})")
    return run.seconds


_STARTS = ("for u in $(systemctl list-units --type=service --no-legend --plain 'zonefarm-*' 'postgresql*' "
           "| awk '{print $1}'); do echo \"$u $(systemctl show -p ExecMainStartTimestampMonotonic --value $u)\"; done")


def service_starts(lab: Lab) -> dict[str, str]:
    """host:unit -> when its main process started: a re-run that restarts nothing leaves all equal."""
    starts: dict[str, str] = {}
    for name in lab.hosts:
        code, out = lab.exec(name, _STARTS)
        for line in out.splitlines() if code == 0 else []:
            unit, _, started = line.partition(" ")
            starts[f"{name}:{unit}"] = started
    return starts


def start_lab(image: str, workdir: Path, attempts: int = 3) -> Lab:
    """A lab up and answering SSH. On this shared machine a host's sshd sometimes misses the lab's
    120 s (load 10, three labs up); that lab is removed by start() and a new one tried."""
    for attempt in range(1, attempts + 1):
        lab = Lab(image, workdir)
        try:
            return lab.start(HOSTS)
        except TimeoutError as exc:
            print(f"lab start {attempt}/{attempts}: {exc}", flush=True)
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def one_run(image: str, index: int, out: Path) -> dict[str, float]:
    """Start a lab, time the four steps on it, remove it."""
    workdir = Path(tempfile.mkdtemp(prefix="zonefarm-lab-bench-"))
    lab = start_lab(image, workdir)
    figures: dict[str, float] = {}
    try:
        inventory = write_inventory(lab, workdir / "inventory")
        figures["fresh"] = _checked("fresh", run_playbook(inventory, lab), out / f"run{index}-fresh.log")
        before = service_starts(lab)
        figures["rerun"] = _checked("rerun", run_playbook(inventory, lab), out / f"run{index}-rerun.log")
        restarted = sorted(unit for unit, started in service_starts(lab).items() if before.get(unit) != started)
        if restarted or not before:
            sys.exit(f"the re-run restarted {restarted}" if restarted else "no service start times read")
        print(f"run {index + 1}: re-run restarted none of {len(before)} services", flush=True)
        write_inventory(lab, inventory, without=())
        figures["limit"] = _checked("limit", run_playbook(inventory, lab, "--limit", "wk3"),
                                    out / f"run{index}-limit.log")
        play = workdir / "baseline.yml"
        play.write_text(BASELINE_PLAY)
        # Once to fill wk3's facts in the cache like the others', then the measured run.
        run_playbook(inventory, lab, playbook=str(play))
        figures["baseline"] = _checked("baseline", run_playbook(inventory, lab, playbook=str(play)),
                                       out / f"run{index}-baseline.log")
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "zonefarm-lab-bench")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    from tests.lab.image import build
    from tests.support.dockerd import ensure_docker

    ensure_docker()
    image = build()
    wheelhouse()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks,ansible.posix.profile_roles"
    os.environ["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "40"
    runs: list[dict[str, float]] = []
    for index in range(args.runs):
        load = os.getloadavg()[0]
        started = time.monotonic()
        figures = one_run(image, index, args.out)
        runs.append(figures)
        print(f"run {index + 1}/{args.runs} (load {load:.1f} -> {os.getloadavg()[0]:.1f}, "
              f"{time.monotonic() - started:.0f} s with the lab's start): "
              + ", ".join(f"{step} {figures[step]:.1f} s" for step in STEPS), flush=True)
    result: dict[str, object] = {"runs": runs}
    base = statistics.median(r["baseline"] for r in runs)
    for step in STEPS:
        median = statistics.median(r[step] for r in runs)
        result[f"{step}_s"] = median
        result[f"{step}_ratio"] = median / base
    print(f"lab deploy, median of {args.runs}: " + ", ".join(
        f"{step} {result[f'{step}_s']:.1f} s ({result[f'{step}_ratio']:.1f}x)" for step in STEPS))
    print(f"logs with the profile_tasks/profile_roles summaries: {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

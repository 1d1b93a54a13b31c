"""Attack: a task taking the worker's memory, processes or CPU.

Before the sandbox a task had no limit at all (and ``limits`` was not even a field). Now a
task carries ``limits`` (memory_mb, cpus, processes; the site's defaults fill what it left
out) and the sandbox enforces them. Over its memory it is killed and ends ``failed`` with
a reason that says so; over its processes it cannot fork; over its CPU time it is stopped.
Here the pool-of-accounts path (setrlimit and the memory watchdog); the systemd path
(MemoryMax, TasksMax, CPUQuota) runs in the lab (tests/lab/test_lab_sandbox.py).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from control.node.sandbox import CGROUP_V1_MEMORY, OomNotifier
from tests.support.secfarm import SecFarm

pytestmark = pytest.mark.slow
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the farm: worker side

GROW = ("import time\nb = []\nfor i in range(64):\n    b.append(bytearray(8 << 20))\n    time.sleep(0.05)\n"
        "print('survived', flush=True)\n")


@SQLITE
def test_over_its_memory_a_task_fails_saying_so(farm: SecFarm) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    hog = farm.submit("shell", {"argv": ["/usr/bin/python3", "-c", GROW]}, limits={"memory_mb": 64},
                      max_attempts=1)
    small = farm.submit("shell", {"argv": ["/usr/bin/python3", "-c", "b = bytearray(8 << 20); print('fine')"]},
                        limits={"memory_mb": 64})
    done = farm.wait(hog["id"], timeout=90)
    assert done["state"] == "failed", done
    assert "memory limit exceeded" in done["reason"] and "64 MiB" in done["reason"], done["reason"]
    assert "survived" not in farm.log(hog["id"])
    assert "memory limit exceeded" in farm.log(hog["id"])  # the user sees why in the log too
    assert farm.wait(small["id"])["state"] == "succeeded" and farm.log(small["id"]) == "fine\n"


@SQLITE
def test_a_task_cannot_fork_past_its_processes(farm: SecFarm) -> None:
    farm.add_node("wk1")
    farm.start_dispatcher("d1")
    bomb = farm.submit("shell", {"argv": ["sh", "-c", "for i in $(seq 40); do sleep 3 & done; wait; echo all-forked"]},
                       limits={"processes": 8}, max_attempts=1)
    done = farm.wait(bomb["id"], timeout=60)
    assert "all-forked" not in farm.log(bomb["id"])
    assert done["state"] == "failed" and "fork" in farm.log(bomb["id"]).lower(), farm.log(bomb["id"])


@SQLITE
def test_a_task_over_its_cpu_time_is_stopped(farm: SecFarm) -> None:
    """0.05 CPU for a 20 s timeout is 1 s of CPU time (RLIMIT_CPU), then SIGXCPU: ``failed``, saying so.

    The wall-clock timeout is twenty times the budget and the node runs its tasks un-niced
    (``task_nice = 0``; niceness is not what this tests), so even on a loaded machine the CPU limit
    ends the spinner first. A limit that did nothing shows ``unlimited`` and ends ``timed_out``.
    """
    farm.add_node("wk1", task_nice=0)
    farm.start_dispatcher("d1")
    spin = farm.submit("shell", {"argv": ["sh", "-c", "grep 'Max cpu time' /proc/self/limits; while :; do :; done"]},
                       limits={"cpus": 0.05}, timeout=20, max_attempts=1)
    done = farm.wait(spin["id"], timeout=60)
    log = farm.log(spin["id"])
    seen = next((line.split()[3:5] for line in log.splitlines() if line.startswith("Max cpu time")), None)
    assert seen == ["1", "6"], log  # soft: 0.05 x 20 s; hard: 5 s more, so SIGXCPU comes before SIGKILL
    assert done["state"] == "failed", (done, log)
    assert "CPU time limit exceeded" in done["reason"], done["reason"]


@SQLITE
def test_limits_above_the_site_maximum_are_refused(farm: SecFarm) -> None:
    resp = farm.api.post("/tasks", token=farm.api.root,
                         json={"name": "shell", "params": {"argv": ["true"]}, "limits": {"memory_mb": 20000}})
    assert resp.status_code == 422 and "limits.memory_mb" in resp.text, resp.text


def _memcg(tmp_name: str, limit_mb: int) -> str:
    """A real cgroup-v1 memory cgroup on this machine (as a systemd unit's is on a lab worker)."""
    if not os.access(CGROUP_V1_MEMORY, os.W_OK):
        pytest.skip(f"no writable cgroup-v1 memory controller at {CGROUP_V1_MEMORY} here")
    path = os.path.join(CGROUP_V1_MEMORY, tmp_name)
    os.mkdir(path)
    with open(os.path.join(path, "memory.limit_in_bytes"), "w") as fh:
        fh.write(str(limit_mb << 20))
    return path


@pytest.mark.parametrize(("grow_mb", "ooms"), [(256, True), (8, False)])
def test_the_kernels_oom_kill_in_a_v1_memory_cgroup_is_counted(grow_mb: int, ooms: bool) -> None:
    """cgroup v1 (the lab's workers): systemd reports an OOM kill as a plain SIGKILL, so the
    sandbox arms the kernel's own notification on the unit's memory cgroup. Here a process
    in a 32 MiB cgroup grows to `grow_mb`; the notifier counts an OOM only when there was one,
    also after the cgroup is removed (which signals it once more)."""
    path = _memcg(f"zonefarm-test-{secrets.token_hex(4)}", 32)
    notifier = OomNotifier(path)
    try:
        code = (f"import os\nopen({os.path.join(path, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                f"b = bytearray({grow_mb} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        os.rmdir(path)
        assert notifier.oom_events() == (1 if ooms else 0), (proc.returncode, proc.stderr)
        assert (proc.returncode == -9) == ooms and ("survived" in proc.stdout) != ooms, proc
    finally:
        notifier.close()
        if os.path.isdir(path):
            os.rmdir(path)

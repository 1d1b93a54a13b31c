"""Attack: a task reading the node's secrets, the platform's config and another user's work.

Before the sandbox a task ran as the account that owns ``node.ini`` (the node key), the
upload key and the work directory, so it could read them all, and Bob's task could read
Alice's ``output.log``, ``spec.json`` and files. Now each read is refused: the task runs
as an identity of its own and every one of those is 0600/0700 and someone else's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.secfarm import SecFarm

pytestmark = pytest.mark.slow
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the farm: worker side

# A file is read when cat gets its bytes, a directory when ls lists it (a file's own name is no secret:
# its directory is 0755 here, see tests/support/secfarm.py).
PROBE = 'for p in "$@"; do if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && r=READ || r=DENIED; ' \
        'else cat "$p" >/dev/null 2>&1 && r=READ || r=DENIED; fi; echo "$r $p"; done; ' \
        'for p in "$@"; do cat "$p" 2>/dev/null; done; true'


def _wait_log(farm: SecFarm, task_id: int, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = farm.log(task_id)
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never printed {text!r}: {farm.log(task_id)!r}")


@SQLITE
def test_a_task_reads_no_secret_and_no_other_task(farm: SecFarm) -> None:
    work = farm.add_node("wk1")
    conf = farm.config_dir("wk1")
    farm.start_dispatcher("d1")
    # Alice's finished task: its attempt directory stays on the node
    alice_done = farm.submit("shell", {"argv": ["sh", "-c", "echo alice-secret-1 > data.txt; echo alice-log-1"]})
    assert farm.wait(alice_done["id"])["state"] == "succeeded"
    finished = farm.attempt_dir("wk1", alice_done["id"])
    # Alice's running task: its own directory, while it runs
    alice_running = farm.submit("shell", {"argv": ["sh", "-c", "echo alice-secret-2 > mine.txt; "
                                                   "echo dir=$ZONEFARM_TASK_DIR; sleep 60"]})
    running_dir = _wait_log(farm, alice_running["id"], "dir=").split("dir=", 1)[1].split()[0]
    targets = [conf / "node.ini", conf / "upload_ed25519", conf / "zonefarm.ini",
               finished / "output.log", finished / "spec.json", finished / "work" / "data.txt", finished,
               f"{running_dir}/mine.txt", running_dir]
    # what docs/security.md says a pool task still may: read world-readable system files (never write
    # them), and reach the network (here the API on loopback)
    system = ('; [ -s /etc/os-release ] && cat /etc/os-release >/dev/null && echo SYSTEM-READ; '
              'if touch /usr/zonefarm-probe 2>/dev/null; then echo SYSTEM-WRITTEN; else echo SYSTEM-READ-ONLY; fi; '
              f'/usr/bin/python3 -c "import urllib.request as u; '
              f'print(\'NET\', u.urlopen(\'{farm.api_url}/api/v1/healthz\', timeout=5).status)"; true')
    bob = farm.submit("shell", {"argv": ["sh", "-c", PROBE + system, "probe", *map(str, targets)]})
    done = farm.wait(bob["id"])
    log = farm.log(bob["id"])
    assert done["state"] == "succeeded", (done, log)
    for target in targets:
        assert f"DENIED {target}" in log, log
    assert "SYSTEM-READ\n" in log and "SYSTEM-READ-ONLY" in log and "SYSTEM-WRITTEN" not in log, log
    assert "NET 200" in log, log
    assert not Path("/usr/zonefarm-probe").exists()
    for secret in (NODES_SECRET, ROOT_SECRET, "alice-secret-1", "alice-secret-2", "alice-log-1", "PRIVATE KEY"):
        assert secret not in log
    node_key = (conf / "node.ini").read_text().split("node_key = ", 1)[1].split()[0]
    assert node_key not in log
    farm.api.post(f"/tasks/{alice_running['id']}/cancel", token=farm.api.root)
    assert farm.wait(alice_running["id"])["state"] == "cancelled"
    assert (work / "tasks").is_dir()

#!/usr/bin/python
"""Ansible module: stop running zonefarm task attempts (cancel or timeout)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zonefarm_kill
short_description: Kill zonefarm task attempts on a worker
description:
  - For each attempt, writes the reason to C(killed) in its task directory first, so the
    runner reports C(finished) with that reason (and never starts a child it was about to
    start), then sends SIGTERM to the task's process group and SIGKILL after I(grace).
  - An attempt with no live runner is returned in C(absent): nobody will report it, so
    the dispatcher records the end itself.
options:
  workdir:
    description: The node's work directory.
    type: path
    required: true
  kills:
    description: Entries with C(id), C(attempt) and C(reason) (C(cancelled) or C(timed_out)).
    type: list
    elements: dict
    required: true
  grace:
    description: Seconds between SIGTERM and SIGKILL.
    type: float
    default: 3.0
"""

RETURN = r"""
killed:
  description: Task ids whose process was signalled or whose runner will stop them.
  type: list
  returned: always
absent:
  description: Task ids with no live runner on this node.
  type: list
  returned: always
"""

import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule

REASONS = ("cancelled", "timed_out")


def read_pid(path):
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            workdir=dict(type="path", required=True),
            kills=dict(type="list", elements="dict", required=True),
            grace=dict(type="float", default=3.0),
        ),
        supports_check_mode=False,
    )
    p = module.params
    killed, absent, groups = [], [], []
    for entry in p["kills"]:
        try:
            task_id, attempt = int(entry["id"]), int(entry.get("attempt") or 1)
        except (KeyError, TypeError, ValueError):
            module.fail_json(msg="kills: every entry needs an integer id and attempt")
        reason = entry.get("reason") or "cancelled"
        if reason not in REASONS:
            module.fail_json(msg="kills: reason must be one of {}, got {!r}".format(", ".join(REASONS), reason))
        tdir = os.path.join(p["workdir"], "tasks", str(task_id), str(attempt))
        if not os.path.isdir(tdir):
            absent.append(task_id)
            continue
        marker = os.path.join(tdir, "killed")
        if not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(reason)
        child = read_pid(os.path.join(tdir, "child.pid"))
        runner = read_pid(os.path.join(tdir, "runner.pid"))
        if child and signal_group(child, signal.SIGTERM):
            groups.append(child)
            killed.append(task_id)
        elif alive(runner):
            killed.append(task_id)  # the runner sees the marker before or after its child
        else:
            absent.append(task_id)
    deadline = time.monotonic() + p["grace"]
    while groups and time.monotonic() < deadline:
        groups = [g for g in groups if group_alive(g)]
        if groups:
            time.sleep(0.1)
    for pgid in groups:
        signal_group(pgid, signal.SIGKILL)
    module.exit_json(changed=bool(killed), killed=killed, absent=absent)


if __name__ == "__main__":
    main()

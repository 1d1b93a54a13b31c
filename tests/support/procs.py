"""Processes for tests and benchmarks: stop a daemon, run a command in the background, and
kill -9 a daemon together with the children it was running (crash tests).

A crashed host takes a daemon's subprocesses down with it (the dispatcher's ansible-runner
job, ansible-playbook and its forks); killing only the daemon's pid would leave them to
finish the round and make the crash gentler than it is. Read from /proc: no psutil here.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM a daemon started in its own session; after ``grace`` seconds SIGKILL its whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def background(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """Run ``argv`` (output piped, text) while the block runs; a process still running when the block
    leaves, by a failure, is killed rather than left behind."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ppids() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        out[int(stat.parent.name)] = int(fields[1])
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, parents before their children."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppids().items():
        children.setdefault(parent, []).append(child)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop(0)
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def kill_tree(pid: int, spare: Callable[[str], bool] = lambda cmd: False) -> list[int]:
    """SIGKILL ``pid`` and its descendants (except those whose command line ``spare`` keeps); returns the killed."""
    tree = [pid] + [p for p in descendants(pid) if not spare(cmdline(p))]
    killed = []
    for target in tree:
        try:
            os.kill(target, signal.SIGKILL)
            killed.append(target)
        except ProcessLookupError:
            pass
    return killed

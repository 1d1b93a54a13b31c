"""zonefarm_kill: the reason is recorded before the signal, stubborn tasks get SIGKILL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.library._kolla import ModuleFail, load_module

kill = load_module("zonefarm_kill")


def _task(workdir: Path, task_id: int, script: str) -> tuple[Path, subprocess.Popen[bytes]]:
    tdir = workdir / "tasks" / str(task_id) / "1"
    tdir.mkdir(parents=True)
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    (tdir / "child.pid").write_text(str(proc.pid))
    time.sleep(0.2)  # let the shell install its trap
    return tdir, proc


def test_kill_records_reason_then_terminates(run_module: Any, tmp_path: Path) -> None:
    tdir, proc = _task(tmp_path, 4, "sleep 60")
    result = run_module(kill, {"workdir": str(tmp_path), "kills": [{"id": 4, "attempt": 1, "reason": "timed_out"}]})
    assert result["killed"] == [4] and result["absent"] == []
    assert (tdir / "killed").read_text() == "timed_out"
    assert proc.wait(5) == -15


def test_kill_escalates_to_sigkill(run_module: Any, tmp_path: Path) -> None:
    tdir, proc = _task(tmp_path, 5, "trap '' TERM; sleep 60 & wait; sleep 60")
    started = time.monotonic()
    result = run_module(kill, {"workdir": str(tmp_path), "grace": 0.5,
                               "kills": [{"id": 5, "attempt": 1, "reason": "cancelled"}]})
    assert result["killed"] == [5]
    assert proc.wait(5) == -9
    assert time.monotonic() - started < 4


def test_attempt_without_runner_is_absent(run_module: Any, tmp_path: Path) -> None:
    gone = tmp_path / "tasks" / "6" / "1"
    gone.mkdir(parents=True)
    (gone / "runner.pid").write_text("999999")
    result = run_module(kill, {"workdir": str(tmp_path), "kills": [
        {"id": 6, "attempt": 1, "reason": "cancelled"}, {"id": 9, "attempt": 1, "reason": "cancelled"}]})
    assert result == {"changed": False, "killed": [], "absent": [6, 9]}
    assert (gone / "killed").read_text() == "cancelled"


def test_unknown_reason_is_refused(run_module: Any, tmp_path: Path) -> None:
    with pytest.raises(ModuleFail, match="reason"):
        run_module(kill, {"workdir": str(tmp_path), "kills": [{"id": 1, "attempt": 1, "reason": "bored"}]})

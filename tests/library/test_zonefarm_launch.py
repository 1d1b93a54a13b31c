"""zonefarm_launch: specs written privately, the runner detached, attempts never doubled."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.library._kolla import ModuleFail, load_module

launch = load_module("zonefarm_launch")


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Any]:
    """A fake interpreter recording how it was started, standing in for the real runner.

    The real runner needs a live API; tests/test_runner.py covers it. Here the point is
    the detaching and the files.
    """
    record = tmp_path / "record"
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\necho \"$$ $(ps -o sid= -p $$) $*\" >> {record}\nexec sleep 30\n")
    fake.chmod(0o755)
    config = tmp_path / "node.ini"
    config.write_text("[node]\nname = n1\n")
    config.chmod(0o600)
    return {"workdir": str(tmp_path / "work"), "config_path": str(config), "python": str(fake),
            "record": record, "launcher": "fork"}


def _wait_record(path: Path, lines: int = 1) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return path.read_text().splitlines()
        time.sleep(0.05)
    raise AssertionError("the runner never started")


def _args(node: dict[str, Any], tasks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"workdir": node["workdir"], "config_path": node["config_path"], "python": node["python"],
            "launcher": node["launcher"], "tasks": tasks, **extra}


def test_shell_batch_is_written_and_runner_detached(run_module: Any, node: dict[str, Any]) -> None:
    tasks = [{"id": 7, "attempt": 2, "name": "shell", "timeout": 30, "upload": None,
              "params": {"argv": ["echo", "hi"], "env": {"A": "1"}, "cwd": "/tmp"}},
             {"id": 8, "attempt": 1, "name": "shell", "params": {"argv": ["true"]}}]
    result = run_module(launch, _args(node, tasks, lease=9))
    assert result["changed"] and result["launched"] == [7, 8] and result["skipped"] == []
    pid = result["runner_pid"]
    try:
        line = _wait_record(node["record"])[0].split()
        assert int(line[0]) == pid
        assert int(line[1]) != os.getsid(0)  # its own session: survives the job and its ssh session
        assert line[2:6] == ["-m", "control.node.runner", "run", "--node-config"]
        t7 = Path(node["workdir"]) / "tasks" / "7" / "2"
        assert line[7:] == [str(t7), str(Path(node["workdir"]) / "tasks" / "8" / "1")]
        spec = json.loads((t7 / "spec.json").read_text())
        assert stat.S_IMODE((t7 / "spec.json").stat().st_mode) == 0o600
        assert spec["steps"] == [{"label": "", "argv": ["echo", "hi"]}]
        assert spec["env"] == {"A": "1"} and spec["cwd"] == "/tmp" and spec["mode"] == "task"
        assert spec["lease"] == 9 and spec["attempt"] == 2 and spec["timeout"] == 30
        assert (t7 / "runner.pid").read_text() == str(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_command_types_run_the_given_program(run_module: Any, node: dict[str, Any]) -> None:
    tasks = [{"id": 3, "attempt": 1, "name": "container", "params": {"image": "x", "env": {"B": "2"}}}]
    result = run_module(launch, _args(node, tasks, command=["/usr/bin/env", "helper"]))
    try:
        spec = json.loads((Path(node["workdir"]) / "tasks/3/1/spec.json").read_text())
        assert spec["steps"] == [{"label": "", "argv": ["/usr/bin/env", "helper"]}] and spec["env"] == {"B": "2"}
        assert spec["params"] == {"image": "x", "env": {"B": "2"}}
    finally:
        os.kill(result["runner_pid"], signal.SIGKILL)


def test_relaunching_an_attempt_is_skipped(run_module: Any, node: dict[str, Any]) -> None:
    tasks = [{"id": 5, "attempt": 1, "name": "shell", "params": {"argv": ["true"]}}]
    first = run_module(launch, _args(node, tasks))
    try:
        second = run_module(launch, _args(node, tasks))
        assert second == {"changed": False, "launched": [], "skipped": [5], "rejected": [], "runner_pid": 0}
        assert len(_wait_record(node["record"])) == 1
    finally:
        os.kill(first["runner_pid"], signal.SIGKILL)


def test_a_bad_entry_is_rejected_alone_and_the_others_launch(run_module: Any, node: dict[str, Any]) -> None:
    """One task's params never fail the host: each bad entry comes back in ``rejected`` with why."""
    tasks = [{"id": 1, "attempt": 1, "name": "shell", "params": {}},
             {"id": 2, "attempt": 1, "name": "shell", "params": {"argv": ["echo", "a\x00b"]}},
             {"id": 3, "attempt": 1, "name": "shell", "params": {"argv": ["true"], "env": {"K": "v\x00"}}},
             {"id": 4, "attempt": 1, "name": "shell", "params": {"argv": "not a list"}},
             {"id": 5, "attempt": 1, "name": "shell", "params": {"argv": ["true"]}, "limits": {"memory_mb": -1}},
             {"id": 6, "attempt": 1, "name": "shell", "params": {"argv": ["echo", "{{ 6*7 }}", "{% raw %}"]}}]
    result = run_module(launch, _args(node, tasks))
    try:
        assert result["launched"] == [6]
        reasons = {r["id"]: r["reason"] for r in result["rejected"]}
        assert sorted(reasons) == [1, 2, 3, 4, 5]
        assert "params.argv" in reasons[1] and "params.argv[1] holds a NUL byte" in reasons[2]
        assert "params.env.K holds a NUL byte" in reasons[3] and "params.argv must be" in reasons[4]
        assert "limits.memory_mb" in reasons[5]
        spec = json.loads((Path(node["workdir"]) / "tasks/6/1/spec.json").read_text())
        assert spec["steps"][0]["argv"] == ["echo", "{{ 6*7 }}", "{% raw %}"]  # data, byte for byte
        assert not (Path(node["workdir"]) / "tasks" / "1").exists()
    finally:
        os.kill(result["runner_pid"], signal.SIGKILL)


def test_steps_and_after_make_the_pipeline_spec(run_module: Any, node: dict[str, Any]) -> None:
    tasks = [{"id": 9, "attempt": 1, "name": "pipeline", "limits": {"memory_mb": 64, "cpus": 0.5},
              "params": {"prepare": [["mkdir", "out"]], "generate": [["sh", "-c", "x"], ["true"]],
                         "outputs": ["out/a"]}},
             {"id": 10, "attempt": 1, "name": "pipeline", "params": {"generate": [], "outputs": ["a"]}}]
    result = run_module(launch, _args(node, tasks, steps=["prepare", "generate"], after=["/bin/up", "load"]))
    try:
        assert result["launched"] == [9] and [r["id"] for r in result["rejected"]] == [10]
        spec = json.loads((Path(node["workdir"]) / "tasks/9/1/spec.json").read_text())
        assert spec["steps"] == [{"label": "stage prepare", "argv": ["mkdir", "out"]},
                                 {"label": "stage generate", "argv": ["sh", "-c", "x"]},
                                 {"label": "stage generate", "argv": ["true"]}]
        assert spec["after"] == ["/bin/up", "load"] and spec["limits"] == {"memory_mb": 64, "cpus": 0.5}
    finally:
        os.kill(result["runner_pid"], signal.SIGKILL)


def test_missing_config_fails(run_module: Any, node: dict[str, Any], tmp_path: Path) -> None:
    args = _args(node, [{"id": 1, "params": {"argv": ["true"]}}])
    args["config_path"] = str(tmp_path / "nope.ini")
    with pytest.raises(ModuleFail, match="config_path"):
        run_module(launch, args)


def test_check_mode_writes_nothing(run_module: Any, node: dict[str, Any]) -> None:
    args = _args(node, [{"id": 1, "params": {"argv": ["true"]}}], _ansible_check_mode=True)
    result = run_module(launch, args)
    assert result["changed"] and result["launched"] == []
    assert not Path(node["workdir"]).exists()


def test_systemd_launcher_starts_a_transient_unit(run_module: Any, node: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd is not PID 1 here, so ``systemd-run`` is a stand-in recording its argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "systemd-run.args"
    fake = bindir / "systemd-run"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    tasks = [{"id": 21, "attempt": 1, "name": "shell", "params": {"argv": ["true"]}}]
    result = run_module(launch, _args(node, tasks, launcher="systemd"))
    assert result["changed"] and result["launched"] == [21] and result["runner_pid"] == 0
    argv = calls.read_text().splitlines()
    assert argv[:3] == ["--quiet", "--collect", "--unit"] and argv[3].startswith("zonefarm-run-")
    assert argv[4:6] == ["--working-directory", node["workdir"]]
    tdir = str(Path(node["workdir"]) / "tasks" / "21" / "1")
    assert argv[6:] == [node["python"], "-m", "control.node.runner", "run", "--node-config", node["config_path"], tdir]


def test_failing_systemd_run_fails_the_launch(run_module: Any, node: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemd-run"
    fake.write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(ModuleFail, match="systemd-run failed: Failed to connect to bus"):
        run_module(launch, _args(node, [{"id": 22, "params": {"argv": ["true"]}}], launcher="systemd"))

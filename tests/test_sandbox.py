"""The task sandbox's own duties (control.node.sandbox), run for real as root on this machine.

The attacks through the whole farm are in tests/security/; here the pieces: the policy the
worker role writes parses and the sudoers line it writes is valid, a request is checked
before anything runs, handing a task's directory back follows no link and clears set-id
bits, a pool account is held by one task at a time and cleaned after a holder that died,
and the systemd backend asks systemd for the properties docs/security.md promises (the lab
runs them, tests/lab/test_lab_sandbox.py).
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
import yaml

from control.node import sandbox
from control.node.sandbox import (
    Caller,
    Helper,
    Policy,
    SandboxError,
    hand_back,
    load_policy,
    parse_request,
    pids_of,
    require_root_owned,
)
from tests.support import fakesystemd

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs as root")


def _role_template(name: str, **extra: object) -> str:
    defaults = yaml.safe_load((ROOT / "roles/worker/defaults/main.yml").read_text())
    values = {k: v for k, v in defaults.items() if "{{" not in str(v)}
    values.update(worker_task_pool_size=10, ansible_managed="test", common_user="zonefarm",
                  common_venv="/opt/zonefarm/venv", **extra)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - INI, not HTML
    return env.from_string((ROOT / "roles/worker/templates" / name).read_text()).render(**values)


def test_the_roles_policy_parses_and_its_sudoers_line_is_valid(tmp_path: Path) -> None:
    policy_file = tmp_path / "sandbox.ini"
    policy_file.write_text(_role_template("sandbox.ini.j2"))
    policy = load_policy(policy_file)
    assert policy.backend == "auto" and policy.root == "/var/lib/zonefarm-sandbox"
    assert policy.pool_uids == range(60100, 60110)
    assert policy.defaults.memory_mb == 2048 and policy.maxima.cpus == 8.0
    sudoers = tmp_path / "sudoers"
    sudoers.write_text(_role_template("sudoers.j2"))
    sudoers.chmod(0o440)
    checked = subprocess.run(["/usr/sbin/visudo", "-cf", str(sudoers)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sudoers.read_text().strip().endswith(
        "zonefarm ALL=(root) NOPASSWD: /opt/zonefarm/venv/bin/zonefarm-sandbox /etc/zonefarm-sandbox.ini")


def test_a_policy_the_caller_could_replace_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "open" / "sandbox.ini"
    loose.parent.mkdir()
    loose.parent.chmod(0o777)
    loose.write_text("[sandbox]\n")
    with pytest.raises(SandboxError, match="writable by root only"):
        require_root_owned(str(loose))
    with pytest.raises(SandboxError, match="unknown key"):
        bad = tmp_path / "bad.ini"
        bad.write_text("[sandbox]\nbackend = pool\nrun_as = 0\n")
        load_policy(bad)
    with pytest.raises(SandboxError, match="pool_first_uid must be 1000 or more"):
        low = tmp_path / "low.ini"
        low.write_text("[sandbox]\npool_first_uid = 0\n")
        load_policy(low)


@pytest.mark.parametrize(("request_", "problem"), [
    ({"id": 1, "attempt": 1, "steps": [{"argv": ["echo", "a\x00b"]}]}, "steps[0].argv[1] holds a NUL byte"),
    ({"id": 1, "attempt": 1, "steps": [{"argv": ["true"]}], "env": {"K": "\x00"}}, "env.K holds a NUL byte"),
    ({"id": 1, "attempt": 1, "steps": [{"argv": ["true"]}], "env": {"A=B": "x"}}, "not a variable name"),
    ({"id": 1, "attempt": 1, "steps": []}, "steps must be a non-empty list"),
    ({"id": 1, "attempt": 1, "steps": [{"argv": ["a"]}, {"argv": ["b"]}], "mode": "runner"}, "exactly one step"),
    ({"id": "x", "steps": [{"argv": ["true"]}]}, "integer id"),
])
def test_a_request_is_checked_before_anything_runs(request_: dict, problem: str) -> None:
    with pytest.raises(SandboxError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_request(json.dumps(request_).encode())


def test_limits_take_defaults_and_are_capped_at_the_nodes_maxima() -> None:
    limits, notes = Policy().effective({"memory_mb": 10 ** 9, "cpus": 0.5})
    assert limits.memory_mb == Policy().maxima.memory_mb and limits.cpus == 0.5
    assert limits.processes == Policy().defaults.processes
    assert notes == [f"limits.memory_mb {10 ** 9} lowered to this node's maximum {Policy().maxima.memory_mb}"]
    with pytest.raises(SandboxError, match="limits.cpus must be more than 0"):
        Policy().effective({"cpus": 0})


def test_handing_back_follows_no_link_and_clears_set_id_bits(tmp_path: Path) -> None:
    task_uid, agent = 60190, 4242
    tree = tmp_path / "task"
    (tree / "sub").mkdir(parents=True)
    (tree / "out.txt").write_text("result")
    (tree / "suid").write_text("#!/bin/sh\n")
    (tree / "suid").chmod(0o4755)
    (tree / "link").symlink_to("/etc/hostname")
    foreign = tmp_path / "foreign"
    foreign.write_text("not the task's")
    os.link(foreign, tree / "hard")  # a hard link to a file the task does not own
    for path in [tree, tree / "sub", tree / "out.txt", tree / "suid"]:
        os.chown(path, task_uid, task_uid)
    os.chown(tree / "link", task_uid, task_uid, follow_symlinks=False)
    (tree / "sub").chmod(0)
    hostname_owner = os.stat("/etc/hostname").st_uid
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hand_back(fd, task_uid, agent, agent)
    finally:
        os.close(fd)
    for path in [tree, tree / "sub", tree / "out.txt", tree / "suid"]:
        assert os.lstat(path).st_uid == agent, path
    assert os.lstat(tree / "link").st_uid == agent and os.stat("/etc/hostname").st_uid == hostname_owner
    assert os.stat(foreign).st_uid == 0  # untouched
    assert not os.stat(tree / "suid").st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert stat.S_IMODE(os.stat(tree).st_mode) == 0o700
    assert os.stat(tree / "sub").st_mode & stat.S_IRWXU == stat.S_IRWXU  # the agent can read what it got


def _helper_process(request_: dict, policy: str = "", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "control.node.sandbox", policy], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **(env or {})})
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request_).encode())
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() has nothing to send
    return proc


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.decode().splitlines() if line.startswith("{")]


def test_a_killed_helper_is_cleaned_up_after_by_the_next_holder(tmp_path: Path) -> None:
    """kill -9 of the helper leaves its task's processes and directory: whoever takes the account next
    kills the first and hands the second back, so no task ever inherits another's leftovers."""
    policy = tmp_path / "policy.ini"
    policy.write_text("[sandbox]\nbackend = pool\npool_first_uid = 60180\npool_size = 1\n")
    first = _helper_process({"id": 901, "attempt": 1, "steps": [{"argv": [
        "sh", "-c", "echo secret > mine.txt; setsid sleep 300 & echo started; sleep 300"]}]}, str(policy))
    assert first.stdout is not None and first.stdout.readline() == b"started\n"
    started = json.loads(first.stderr.readline())
    assert started["event"] == "started" and started["uid"] == 60180
    os.killpg(first.pid, signal.SIGKILL)  # the helper and the task's group; the setsid sleep survives
    first.wait()
    time.sleep(0.2)
    assert pids_of(60180), "a detached process of the task should have outlived the helper"
    second = _helper_process({"id": 902, "attempt": 1, "steps": [{"argv": ["sh", "-c", f"cat {started['dir']}/mine.txt"
                                                                           " || echo denied"]}]}, str(policy))
    out, err = second.communicate(timeout=60)
    assert b"secret" not in out and b"denied" in out
    assert not pids_of(60180)
    assert os.stat(started["dir"]).st_uid == os.geteuid()  # handed back to its agent


def test_one_account_per_running_task(tmp_path: Path) -> None:
    policy = tmp_path / "policy.ini"
    policy.write_text("[sandbox]\nbackend = pool\npool_first_uid = 60170\npool_size = 3\n")
    procs = [_helper_process({"id": 910 + i, "attempt": 1, "steps": [{"argv": ["sh", "-c", "id -u; sleep 1"]}]},
                             str(policy)) for i in range(3)]
    uids = {int(p.communicate(timeout=60)[0].split()[0]) for p in procs}
    assert uids == {60170, 60171, 60172}


def test_the_systemd_unit_carries_the_promised_properties() -> None:
    request_ = parse_request(json.dumps({"id": 5, "attempt": 2, "steps": [{"argv": ["id"]}], "cwd": "sub",
                                         "limits": {"memory_mb": 256, "cpus": 1.5, "processes": 64},
                                         "env": {"A": "1"}}).encode())
    helper = Helper(Policy(backend="systemd"), Caller(0, 0, False), request_)
    argv = helper.systemd_argv("zonefarm-task-x", "zonefarm-task-x", ["id"], {"A": "1"})
    props = {a.split("=", 1)[1] for a in argv if a.startswith("--property=")}
    for wanted in ("DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "NoNewPrivileges=yes", "MemoryMax=256M", "CPUQuota=150%", "TasksMax=64",
                   "StateDirectory=zonefarm-task-x", "CapabilityBoundingSet=", "OOMPolicy=kill"):
        assert wanted in props, wanted
    assert "--working-directory=/var/lib/zonefarm-task-x/sub" in argv and "--setenv=A=1" in argv
    assert argv[argv.index("--") + 1:] == ["id"] and "--wait" in argv and "--pipe" in argv


def test_run_helper_refuses_a_request_before_running_anything() -> None:
    raw = json.dumps({"id": 1, "attempt": 1, "steps": [{"argv": ["touch", "/tmp/x\x00"]}]}).encode()
    assert sandbox.run_helper("", stdin=io.BytesIO(raw)) == sandbox.EXIT_REFUSED


def _wait_for_line(stream: object, wanted: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()  # type: ignore[attr-defined]
        if line == wanted:
            return
        assert line, f"output ended before {wanted!r}"
    raise AssertionError(f"no {wanted!r} within {timeout}s")


@pytest.mark.parametrize("system", ["offline", "stopping"])
def test_a_signal_zonefarm_did_not_send_is_never_a_success(tmp_path: Path, system: str) -> None:
    """Pool backend: a task's process killed by someone else's SIGTERM (root, a shutdown's final kill)
    ends with the signal and a reason naming it; `node_stopping` tells the runner whether systemd
    is taking the host down (a stand-in `systemctl` says so here: systemd is not PID 1)."""
    env = fakesystemd.install(tmp_path / "bin", tmp_path / "systemd")
    fakesystemd.system_state(tmp_path / "systemd", system)
    policy = tmp_path / "policy.ini"
    policy.write_text("[sandbox]\nbackend = pool\npool_first_uid = 60160\npool_size = 1\n")
    proc = _helper_process({"id": 920, "attempt": 1, "steps": [{"argv": [
        "sh", "-c", "echo started; exec sleep 30"]}]}, str(policy), env)
    _wait_for_line(proc.stdout, b"started\n")
    for pid in pids_of(60160):
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    result = _events(err)[-1]
    assert result["event"] == "result" and result["exit_code"] == -signal.SIGTERM, result
    assert result["reason"] == ("killed by SIGTERM, which zonefarm did not send "
                                "(the node may be shutting down)"), result
    assert result["stopped"] is False and result["node_stopping"] is (system == "stopping")
    assert b"killed by SIGTERM" in out


def test_a_sandbox_stopped_between_two_steps_is_not_a_success(tmp_path: Path) -> None:
    """SIGTERM to the sandbox while a step that ignores it runs: that step ends 0, the next never
    runs, and the attempt ends with the signal, not with the last step's 0."""
    policy = tmp_path / "policy.ini"
    policy.write_text("[sandbox]\nbackend = pool\npool_first_uid = 60161\npool_size = 1\n")
    proc = _helper_process({"id": 921, "attempt": 1, "steps": [
        {"argv": ["sh", "-c", "trap '' TERM; echo first; sleep 1"]}, {"argv": ["echo", "SECOND-RAN"]}]},
        str(policy))
    _wait_for_line(proc.stdout, b"first\n")
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    result = _events(err)[-1]
    assert result["exit_code"] == -signal.SIGTERM and result["stopped"] is True, result
    assert b"SECOND-RAN" not in out


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """systemd-run and systemctl stand-ins (tests/support/fakesystemd.py) and a systemd-backend policy."""
    env = fakesystemd.install(tmp_path / "bin", tmp_path / "systemd")
    policy = tmp_path / "policy.ini"
    policy.write_text(f"[sandbox]\nbackend = systemd\nroot = {tmp_path / 'sandbox'}\n")
    yield env, policy
    for left in Path("/var/lib").glob("zonefarm-task-93*"):  # the stand-in's StateDirectory links
        left.unlink()


def test_a_task_unit_stopped_by_the_host_is_reported_as_killed(fake_systemd: tuple[dict[str, str], Path]) -> None:
    """systemd backend: `systemctl stop` of the task's unit (what a host's shutdown does) while the
    task runs. The unit is a oneshot, so the SIGTERM is not systemd's clean exit: the result is the
    signal, with a reason, and `node_stopping` once systemd says it is stopping. A task ending by
    itself still reports its own exit code (0 and 3)."""
    env, policy = fake_systemd
    state = Path(env["FAKE_SYSTEMD_DIR"])
    fakesystemd.system_state(state, "stopping")
    proc = _helper_process({"id": 930, "attempt": 1, "steps": [{"argv": ["sh", "-c", "echo started; exec sleep 30"]}]},
                           str(policy), env)
    _wait_for_line(proc.stdout, b"started\n")
    deadline = time.monotonic() + 10  # the stand-in records the pid once Popen has returned: after "started"
    while not (pids := list(state.glob("zonefarm-task-930-*.pid"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    unit = pids[0].name.removesuffix(".pid")
    assert "--service-type=oneshot" in (state / f"{unit}.argv").read_text().splitlines()
    subprocess.run(["systemctl", "stop", unit], env={**os.environ, **env}, check=True)
    _out, err = proc.communicate(timeout=30)
    result = _events(err)[-1]
    assert result["exit_code"] == -signal.SIGTERM and result["node_stopping"] is True, result
    assert "killed by SIGTERM, which zonefarm did not send" in result["reason"]
    assert not (state / f"{unit}.show").exists()  # reset-failed: no failed unit is left behind
    for task_id, code in ((931, 0), (932, 3)):
        _out, err = _helper_process({"id": task_id, "attempt": 1, "steps": [{"argv": ["sh", "-c", f"exit {code}"]}]},
                                    str(policy), env).communicate(timeout=30)
        result = _events(err)[-1]
        assert result["exit_code"] == code and result["reason"] is None, result
        assert result["node_stopping"] is (code != 0)  # asked only when the task ended badly


def test_pid_1_falling_silent_on_a_systemd_host_means_it_is_going_down(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Late in a shutdown PID 1 closes its socket: `systemctl` fails and nothing says `stopping` any
    more. As root on a host systemd booted that silence means the end; where systemd is not PID 1,
    or from an account that needs D-Bus, only `stopping` counts (stand-in `systemctl` here)."""
    env = fakesystemd.install(tmp_path / "bin", tmp_path / "systemd")
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setattr(sandbox, "SYSTEMD_BOOTED", str(tmp_path))  # an existing directory: booted by systemd
    for state, going in (("running", False), ("degraded", False), ("stopping", True), ("unreachable", True)):
        fakesystemd.system_state(tmp_path / "systemd", state)
        assert sandbox.node_stopping() is going, state
    monkeypatch.setattr(sandbox, "SYSTEMD_BOOTED", str(tmp_path / "absent"))
    assert sandbox.node_stopping() is False  # still "unreachable": no systemd here, so nothing to go by
    fakesystemd.system_state(tmp_path / "systemd", "stopping")
    assert sandbox.node_stopping() is True

"""The worker's task runner, against a recording HTTP server that checks every signature.

The end-to-end path (real API, real ansible-runner jobs) is in test_dispatch.py; here
the runner's own duties are pinned down quickly: output arrives in ``log`` callbacks,
exit codes and outputs in ``finished``, kills and timeouts end with their reason, a
403 makes it stop silently, and neither the child's environment nor anything it
prints carries the nodes secret.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.node import runner
from control.node.config import write_node_config
from control.node.runner import run_batch
from tests.support import fakesystemd
from tests.support.recorder import SECRET, Recorder, recording_server, spec_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    with recording_server() as rec:
        yield rec


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """``run_batch`` sets the umask of the runner process it expects to be (0077). Run inside
    pytest, that umask stayed for the rest of the session: every later subprocess, the local
    deploy's wheelhouse among them, made private files, and a second deploy "changed" them."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture
def node(tmp_path: Path, recorder: tuple[Recorder, str]) -> Path:
    # task_nice 0: these tests run the runner inside pytest, which must keep its priority
    return write_node_config(tmp_path / "node.ini", name="wk1", api_url=recorder[1], node_key=SECRET,
                             workdir=str(tmp_path / "work"), task_nice=0)


def test_output_and_exit_codes_are_reported(recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    rec, _ = recorder
    ok = spec_dir(tmp_path, 1, ["sh", "-c", "echo hello; echo '{\"n\": 3}' > $ZONEFARM_TASK_DIR/outputs.json"])
    bad = spec_dir(tmp_path, 2, ["sh", "-c", "echo oops >&2; exit 3"], env={"GREETING": "hi"})
    missing = spec_dir(tmp_path, 3, ["/nonexistent/program"])
    assert run_batch(str(node), [str(ok), str(bad), str(missing)]) == 0
    assert rec.of(1)[-1] == {"task": 1, "node": "wk1", "event": "finished", "attempt": 1, "exit_code": 0,
                             "outputs": {"n": 3}}
    assert rec.log(1) == "hello\n" and (ok / "output.log").read_text() == "hello\n"
    assert rec.wait_for(2, "finished")["exit_code"] == 3 and rec.log(2) == "oops\n"
    assert rec.wait_for(3, "finished")["exit_code"] == 127
    assert "cannot start" in rec.log(3)
    assert (ok / "runner.pid").read_text() == str(os.getpid())


def test_a_failed_step_is_named_and_stops_the_steps_after_it(recorder: tuple[Recorder, str], node: Path,
                                                             tmp_path: Path) -> None:
    rec, _ = recorder
    steps = [{"label": "prepare", "argv": ["sh", "-c", "echo ready"]},
             {"label": "generate", "argv": ["sh", "-c", "exit 4"]},
             {"label": "load", "argv": ["sh", "-c", "echo never"]}]
    task = spec_dir(tmp_path, 1, [], steps=steps)
    assert run_batch(str(node), [str(task)]) == 0
    assert rec.wait_for(1, "finished")["exit_code"] == 4
    log = rec.log(1)
    assert "prepare: sh -c echo ready" in log and "ready\n" in log
    assert "generate failed with exit code 4" in log
    assert "prepare failed" not in log and "load" not in log and "never" not in log


def test_a_task_ending_within_the_start_grace_reports_only_its_end(
        recorder: tuple[Recorder, str], node: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, _ = recorder
    monkeypatch.setattr(runner, "START_GRACE", 5.0)  # generous: `true` ends long before it
    quick = spec_dir(tmp_path, 1, ["true"])
    assert run_batch(str(node), [str(quick)]) == 0
    assert [e["event"] for e in rec.of(1)] == ["finished"]
    monkeypatch.setattr(runner, "START_GRACE", 0.1)
    slow = spec_dir(tmp_path, 2, ["sleep", "1"], lease=30)  # no progress report before it ends
    assert run_batch(str(node), [str(slow)]) == 0
    assert [e["event"] for e in rec.of(2)] == ["started", "finished"]


def test_log_grows_while_the_task_runs(recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    rec, _ = recorder
    tdir = spec_dir(tmp_path, 4, ["sh", "-c", "echo one; sleep 2.5; echo two"])
    thread = threading.Thread(target=run_batch, args=(str(node), [str(tdir)]))
    thread.start()
    deadline = time.monotonic() + 10
    while "one" not in rec.log(4) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.log(4) == "one\n" and not rec.of(4, "finished")  # seen before the task ended
    thread.join(20)
    assert rec.log(4) == "one\ntwo\n" and rec.of(4, "finished")[0]["exit_code"] == 0


def test_child_env_is_filtered_and_secret_never_leaks(recorder: tuple[Recorder, str], node: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, _ = recorder
    monkeypatch.setenv("ZONEFARM_NODES_SECRET", SECRET)  # even if the runner inherited it
    tdir = spec_dir(tmp_path, 5, ["sh", "-c", "env; cat spec.json 2>/dev/null; true"], env={"MINE": "yes"})
    run_batch(str(node), [str(tdir)])
    out = rec.log(5)
    task_dir = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("ZONEFARM_TASK_DIR="))
    assert "MINE=yes" in out and f"HOME={task_dir}" in out
    assert task_dir.startswith("/var/lib/zonefarm-sandbox/tasks/")  # the sandbox's, not the agent's work dir
    assert (tdir / "work").is_dir()  # handed back to the runner once the task ended
    assert "ZONEFARM_NODES_SECRET" not in out and SECRET not in out
    for path in tdir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_timeout_kills_and_reports_timed_out(recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    rec, _ = recorder
    tdir = spec_dir(tmp_path, 6, ["sleep", "30"], timeout=1)
    started = time.monotonic()
    run_batch(str(node), [str(tdir)])
    assert time.monotonic() - started < 10
    done = rec.of(6, "finished")[0]
    assert done["reason"] == "timed_out" and done["exit_code"] == -signal.SIGTERM
    assert (tdir / "killed").read_text() == "timed_out"


def test_kill_marker_and_cancel_answer(recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    rec, _ = recorder
    rec.cancel.add(8)
    pre = spec_dir(tmp_path, 7, ["sh", "-c", "echo should-not-run"])
    (pre / "killed").write_text("cancelled")
    asked = spec_dir(tmp_path, 8, ["sleep", "30"], lease=1.5)  # progress every 0.5 s answers cancel
    marked = spec_dir(tmp_path, 9, ["sh", "-c", "trap '' TERM; sleep 30"])
    threading.Timer(1.0, lambda: (marked / "killed").write_text("timed_out")).start()
    started = time.monotonic()
    run_batch(str(node), [str(pre), str(asked), str(marked)])
    assert time.monotonic() - started < 15
    assert rec.of(7, "finished")[0]["reason"] == "cancelled" and "should-not-run" not in rec.log(7)
    assert rec.of(8, "finished")[0]["reason"] == "cancelled"
    done9 = rec.of(9, "finished")[0]
    assert done9["reason"] == "timed_out" and done9["exit_code"] == -signal.SIGKILL  # ignored TERM


def test_stale_attempt_stops_without_reporting(recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    rec, _ = recorder
    rec.stale.add(10)
    tdir = spec_dir(tmp_path, 10, ["sleep", "30"])
    started = time.monotonic()
    run_batch(str(node), [str(tdir)])
    assert time.monotonic() - started < 10 and rec.of(10) == []
    child = int((tdir / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_runner_and_tasks_run_niced_in_the_runners_session(recorder: tuple[Recorder, str], node: Path,
                                                          tmp_path: Path) -> None:
    """A separate runner process (as zonefarm_launch starts it) at task_nice 7."""
    rec, url = recorder
    niced = write_node_config(tmp_path / "niced.ini", name="wk1", api_url=url, node_key=SECRET,
                              workdir=str(tmp_path / "work"), task_nice=7)
    probe = ("import json, os; print(json.dumps({'nice': os.getpriority(os.PRIO_PROCESS, 0), "
             "'pgid': os.getpgid(0), 'pid': os.getpid(), 'sid': os.getsid(0), "
             "'autogroup': open('/proc/self/autogroup').read() if os.path.exists('/proc/self/autogroup') else ''}))")
    tdir = spec_dir(tmp_path, 12, ["/usr/bin/python3", "-c", probe])  # one the task's identity may run
    runner_proc = subprocess.run([sys.executable, "-m", "control.node.runner", "run", "--node-config", str(niced),
                                  str(tdir)], start_new_session=True, capture_output=True, timeout=60)
    assert runner_proc.returncode == 0, runner_proc.stderr
    assert rec.wait_for(12, "finished")["exit_code"] == 0
    seen = json.loads((tdir / "output.log").read_text())
    assert seen["nice"] == 7
    # the sandbox's process group, which the runner and zonefarm_kill signal whole
    assert seen["pgid"] == int((tdir / "child.pid").read_text()) != seen["pid"]
    assert seen["sid"] != os.getsid(0)  # the runner's session (started with its own), not ours
    if seen["autogroup"]:  # autogroup kernels: the session's group is niced too
        assert seen["autogroup"].strip().endswith("nice 7"), seen["autogroup"]


def test_task_nice_out_of_range_is_refused(tmp_path: Path) -> None:
    from control.node.config import NodeConfigError, load_node_config

    bad = write_node_config(tmp_path / "bad.ini", name="wk1", api_url="http://127.0.0.1:1", node_key=SECRET,
                            task_nice=25)
    with pytest.raises(NodeConfigError, match="task_nice must be between 0 and 19, got 25"):
        load_node_config(bad)


def test_runner_refuses_a_readable_config(recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    os.chmod(node, 0o644)
    tdir = spec_dir(tmp_path, 11, ["true"])
    proc = subprocess.run([sys.executable, "-m", "control.node.runner", "run", "--node-config", str(node), str(tdir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode != 0 and "chmod 600" in proc.stderr
    assert recorder[0].of(11) == []


def test_finished_attempts_are_marked_and_pruned_later(recorder: tuple[Recorder, str], node: Path,
                                                       tmp_path: Path) -> None:
    from control.node.agent import prune_task_dirs

    old = spec_dir(tmp_path, 12, ["true"])
    run_batch(str(node), [str(old)])
    finished = float((old / "done").read_text())
    assert abs(finished - time.time()) < 30
    running = spec_dir(tmp_path, 13, ["true"])  # no done marker: still someone's
    work = str(tmp_path / "work")
    assert prune_task_dirs(work, keep_seconds=3600) == []
    assert prune_task_dirs(work, keep_seconds=3600, now=finished + 7200) == [str(old)]
    assert not old.parent.exists() and running.exists()


def test_api_down_for_longer_than_a_report_retries_loses_nothing(recorder: tuple[Recorder, str], node: Path,
                                                                 tmp_path: Path) -> None:
    """An API restart (kill -9, then back) must not orphan the task nor drop its output or its result.

    The API is down for longer than ``started``/``progress``/``log`` keep retrying, and the task ends
    while it is still down: the runner must keep the child going, keep the output, and deliver
    ``finished`` once the API is back, exactly once.
    """
    from control.node.runner import REPORT_PATIENCE

    rec, _ = recorder
    rec.down = True
    tdir = spec_dir(tmp_path, 14, ["sh", "-c", "echo ran >> ran.log; echo out; sleep 2; echo end"], lease=1.5)
    thread = threading.Thread(target=run_batch, args=(str(node), [str(tdir)]))
    thread.start()
    time.sleep(REPORT_PATIENCE * 2 + 1)  # every report so far has given up at least once
    assert thread.is_alive() and not (tdir / "runner.error").exists()
    assert (tdir / "output.log").read_text() == "out\nend\n"  # the task ran to its end meanwhile
    rec.down = False
    thread.join(60)
    assert not thread.is_alive() and not (tdir / "runner.error").exists()
    assert rec.dropped >= 3 and "callback started failed" in (tdir / "callbacks.log").read_text()
    finished = rec.of(14, "finished")
    assert len(finished) == 1 and finished[0]["exit_code"] == 0
    assert rec.log(14) == "out\nend\n"  # held back while the API was down, then sent once, in order
    assert (tdir / "work" / "ran.log").read_text() == "ran\n"


def test_sandbox_directories_left_behind_are_pruned(tmp_path: Path) -> None:
    """A runner that died before taking a task's directory back leaves it in the sandbox's tree."""
    from control.node.agent import prune_sandbox_dirs
    from control.node.config import load_node_config

    root = tmp_path / "sandbox"
    policy = tmp_path / "policy.ini"
    policy.write_text(f"[sandbox]\nroot = {root}\n")
    mine = root / "tasks" / str(os.geteuid())
    old, fresh, foreign = mine / "1-1-aa", mine / "2-1-bb", mine / "3-1-cc"
    for d in (old, fresh, foreign):
        d.mkdir(parents=True)
    os.chown(foreign, 60199, 60199)  # not handed back yet: the task account's until it is
    past = time.time() - 8 * 86400
    for d in (old, foreign):
        os.utime(d, (past, past))
    config = load_node_config(write_node_config(tmp_path / "node.ini", name="wk1", api_url="http://127.0.0.1:1",
                                                node_key=SECRET, sandbox_policy=str(policy)))
    assert prune_sandbox_dirs(config, keep_seconds=7 * 86400) == [str(old)]
    assert fresh.exists() and foreign.exists() and not old.exists()


def test_a_runner_told_to_stop_stops_its_tasks_and_reports_no_result(recorder: tuple[Recorder, str], node: Path,
                                                                      tmp_path: Path) -> None:
    """SIGTERM to the runner (its unit stopped, a shutdown's kill of every process): the node is
    going down. The task is stopped, nothing is reported (the lease requeues it elsewhere) and the
    runner ends within the kill grace instead of retrying reports into a dying network."""
    rec, _ = recorder
    tdir = spec_dir(tmp_path, 15, ["sleep", "30"], lease=30)
    runner_proc = subprocess.Popen([sys.executable, "-m", "control.node.runner", "run", "--node-config", str(node),
                                    str(tdir)], start_new_session=True, cwd=ROOT)
    rec.wait_for(15, "started")
    asked = time.monotonic()
    runner_proc.send_signal(signal.SIGTERM)
    assert runner_proc.wait(30) == 0
    assert time.monotonic() - asked < runner.KILL_GRACE + 3
    assert [e["event"] for e in rec.of(15)] == ["started"]
    assert (tdir / runner.GOING_DOWN).exists() and (tdir / "done").exists()
    assert "the node is going down" in (tdir / "output.log").read_text()
    with pytest.raises(ProcessLookupError):  # the sandbox's group, and the task in it, are gone
        os.killpg(int((tdir / "child.pid").read_text()), 0)


def test_a_task_killed_while_the_host_stops_is_left_to_its_lease(
        recorder: tuple[Recorder, str], node: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task killed by a SIGTERM zonefarm did not send ends `failed` naming the signal, except while
    systemd stops the host: then the runner reports no result at all. systemd is not PID 1 here, so a
    stand-in `systemctl` (tests/support/fakesystemd.py) answers `is-system-running`."""
    rec, _ = recorder
    env = fakesystemd.install(tmp_path / "bin", tmp_path / "systemd")
    monkeypatch.setenv("PATH", env["PATH"])  # the sandbox gets the runner's PATH
    suicide = ["sh", "-c", "echo begun; kill -TERM $$; echo not-reached"]
    fakesystemd.system_state(tmp_path / "systemd", "running")
    alive = spec_dir(tmp_path, 16, suicide)
    run_batch(str(node), [str(alive)])
    done = rec.wait_for(16, "finished")
    assert done["exit_code"] == -signal.SIGTERM and "reason" not in done, done
    assert done["failure"].startswith("killed by SIGTERM, which zonefarm did not send"), done
    fakesystemd.system_state(tmp_path / "systemd", "stopping")
    stopping = spec_dir(tmp_path, 17, suicide)
    run_batch(str(node), [str(stopping)])
    assert rec.of(17, "finished") == [] and (stopping / runner.GOING_DOWN).exists()
    assert (stopping / "output.log").read_text().startswith("begun\n")


def test_a_sandbox_stopped_by_a_signal_the_runner_did_not_send_reports_no_result(
        recorder: tuple[Recorder, str], node: Path, tmp_path: Path) -> None:
    """A shutdown's final kill of every process reaches the sandbox and the runner together, and the
    sandbox may answer (`stopped`) before the runner's own handler has run: a stop the runner did not
    send means the node is going down, so nothing is reported. The same stop sent by the runner
    (a timeout) is reported as usual: test_timeout_kills_and_reports_timed_out."""
    rec, _ = recorder
    tdir = spec_dir(tmp_path, 18, ["sleep", "30"], lease=30)
    thread = threading.Thread(target=run_batch, args=(str(node), [str(tdir)]))
    thread.start()
    rec.wait_for(18, "started")
    os.kill(int((tdir / "child.pid").read_text()), signal.SIGTERM)  # the sandbox (root runner: no sudo)
    thread.join(30)
    assert not thread.is_alive()
    assert [e["event"] for e in rec.of(18)] == ["started"]
    assert (tdir / runner.GOING_DOWN).exists() and not (tdir / "runner.error").exists()

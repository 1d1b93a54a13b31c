"""The worker-side task runner: started detached by ``zonefarm_launch``, reports by callbacks.

One runner process supervises every task of one launch (a node's batch in a dispatch
round), one thread per task: a Python process per task would cost ~10 MB and ~30 ms each
and 1,000 of them at once do not fit on a small worker. The hot path is standard
library only (subprocess, and ``control.node.client`` on http.client) so the first ``started``
callback leaves within ``START_GRACE`` of the launch. A task that ends within that grace
sends only ``finished`` (the API records its ``running`` event all the same): short tasks
are common (Z-Node's named functions, broadcasts), and one report instead of two halves
the write load they put on the control plane.

**The runner never runs user code itself.** It stays in the node agent's account, holds the
node key and the upload key, and hands each attempt to the task sandbox
(``control.node.sandbox``: directly when the runner is root, through ``sudo`` otherwise),
which runs the task's steps under an identity of its own (a pool account or a systemd
``DynamicUser``), in a 0700 directory of that identity, with the task's limits. The task's
environment carries no zonefarm secret and no path to one. When the sandbox has handed the
task's directory back, the runner moves it to ``work/`` in the attempt directory and, for
types that have one, runs the trusted ``after`` program (the pipeline's SFTP upload) in its
own account.

Per task attempt, under ``<workdir>/tasks/<id>/<attempt>/`` (0700, the agent's; files 0600):
``spec.json`` (written by the launch module), ``runner.pid`` (the runner's pid),
``child.pid`` (the sandbox's process group), ``output.log``, ``killed`` (a reason, written by
``zonefarm_kill`` before it signals, or by the runner itself on timeout or cancel),
``work/`` (the task's own directory once the task has ended; ``outputs.json`` in it is the
task's outputs), ``outputs.json``/``failure`` (written by trusted type programs only),
``callbacks.log`` (reports that did not land, status lines only) and ``done`` (when the
runner let go of it; the node agent deletes attempts done longer ago than
``task_dirs_keep_days``). The node key is read from the node config file, never from argv
or env.

The runner enforces the task timeout itself as well as obeying the dispatcher's kills, so
a task cannot outlive its timeout when the control plane is unreachable.

**A node going down reports nothing.** When the runner gets SIGTERM, the sandbox is stopped
by a signal the runner did not send, or a task ends badly (not by zonefarm's own kill) while
systemd says the host is ``stopping``, the attempt gets no ``finished``: the host's shutdown
cut it short, so its lease runs out and the reaper requeues it on another node. The runner
stops its tasks within the kill grace and makes no report that could hold the shutdown up
(``going-down`` in the attempt says why).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from control.node.client import TransportError, node_client
from control.node.config import NodeConfig, NodeConfigError, load_node_config
from control.node.sandbox import node_stopping

LOG_CHUNK = 64 * 1024  # characters per log callback
LOG_INTERVAL = 1.0
KILL_GRACE = 5.0
REPORT_PATIENCE = 4.0  # seconds a started/progress/log report keeps retrying before the next one takes over
FINISHED_PATIENCE = 180.0  # seconds a finished report keeps retrying: it must outlast an API restart
POLL = 0.2
START_GRACE = 0.3  # seconds: a task that ends sooner reports only "finished"
DONE = "done"


class StaleAttempt(Exception):
    """The API answered 403: this attempt is no longer ours; stop without reporting."""


class CallbackFailed(ConnectionError):
    """The API did not take a report within its patience (down, restarting, or refusing it)."""


GOING_DOWN = "going-down"  # in the attempt directory: why no result was reported for it


class Callbacks:
    """Signed callbacks for one task attempt, through the worker's API client, retried with a bound."""

    def __init__(self, config: NodeConfig, task_id: int, attempt: int,
                 going_down: threading.Event | None = None) -> None:
        self.route = f"/tasks/{task_id}/callback"
        self.attempt = attempt
        self.client = node_client(config)
        self.going_down = going_down or threading.Event()

    def send(self, event: str, *, patience: float | None = None, **data: Any) -> dict[str, Any]:
        """Deliver one report, retrying with backoff until it lands or its patience runs out.

        Retries are bounded by time, not count, so an API restart of a few seconds (a
        kill -9 and a supervisor bringing it back) is absorbed whatever each attempt costs.
        A lost ``finished`` would let the lease rerun a task that already ran, so it
        outlasts a restart by far; the other reports are superseded by the next one, and the
        caller carries on without them (see ``TaskRun._report``). Each attempt is signed
        afresh by the client: a retried request is a new nonce, never a replay.
        """
        payload = {"event": event, "attempt": self.attempt, **data}
        if patience is None:
            patience = FINISHED_PATIENCE if event == "finished" else REPORT_PATIENCE
        deadline = time.monotonic() + patience
        delay = 0.2
        last = ""
        while True:
            try:
                resp = self.client.post(self.route, payload)
            except TransportError as exc:
                last = str(exc)
            else:
                if resp.status == 403:
                    raise StaleAttempt(resp.text[:200])
                if resp.status < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        return {}
                last = f"HTTP {resp.status}: {resp.text[:200]}"
                if 400 <= resp.status < 500 and resp.status not in (401, 408, 409, 429):
                    break  # our request is wrong; repeating it will not help
            pause = min(delay, deadline - time.monotonic())
            if pause <= 0:
                break
            if self.going_down.wait(pause):  # the node is going down: retrying would hold up its shutdown
                last = "the node is going down"
                break
            delay = min(delay * 2, 5.0)
        raise CallbackFailed(f"callback {event} failed: {last}")

    def close(self) -> None:
        self.client.close()


OUTPUTS_MAX = 1024 * 1024  # bytes of outputs.json a task may leave; more is ignored
FAILURE_MAX = 1000  # characters of a failure reason sent to the API
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")


class SandboxUnavailable(RuntimeError):
    """This runner cannot reach the task sandbox (not root, and no sudo rule configured)."""


def sandbox_argv(config: NodeConfig) -> list[str]:
    """How to start the task sandbox: directly as root, else through ``sudo`` exactly as its rule says."""
    if os.geteuid() == 0:  # the file itself, isolated (-I) and without site (-S): standard library only
        return [sys.executable, "-I", "-S", str(Path(__file__).with_name("sandbox.py")), config.sandbox_policy]
    if not config.sandbox_policy:
        raise SandboxUnavailable("the runner is not root and the node config names no sandbox_policy: "
                                 "tasks cannot be given an identity of their own (see docs/security.md)")
    command = config.sandbox_command or str(Path(sys.executable).with_name("zonefarm-sandbox"))
    return ["sudo", "-n", command, config.sandbox_policy]


def sandbox_env() -> dict[str, str]:
    """The helper's environment (sudo resets it anyway): enough to find Python and the package."""
    env = {k: v for k, v in os.environ.items() if k in (*_ENV_KEEP, "PYTHONPATH")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def task_env(spec: dict[str, Any]) -> dict[str, str]:
    """The task's environment: a minimal base, the task's own ``env``, its id. No secret, no path to one."""
    base = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    base.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    base["ZONEFARM_TASK_ID"] = str(spec["id"])
    return base


def spec_steps(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The commands to run in the sandbox, in order (``argv`` alone is one unlabelled step)."""
    steps = spec.get("steps")
    if steps is None and spec.get("argv"):
        steps = [{"label": "", "argv": spec["argv"]}]
    return list(steps or [])


def read_task_file(directory: Path, name: str, limit: int = OUTPUTS_MAX) -> bytes | None:
    """A regular file the task left in its directory, read without following a symlink.

    The task cannot swap anything any more (its processes are gone and the directory is
    the agent's), but it may have left ``outputs.json`` as a link to ``node.ini``: refused.
    """
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return fh.read(limit + 1)[:limit]


class TaskRun:
    """Runs one task attempt to its end, through the sandbox, and reports it."""

    def __init__(self, config: NodeConfig, tdir: Path, going_down: threading.Event | None = None) -> None:
        self.config = config
        self.tdir = tdir
        self.spec: dict[str, Any] = json.loads((tdir / "spec.json").read_text())
        # set when the runner gets SIGTERM: the node (or the runner's unit) is going down
        self.going_down = going_down or threading.Event()
        self.cb = Callbacks(config, int(self.spec["id"]), int(self.spec["attempt"]), self.going_down)
        lease = float(self.spec.get("lease") or 60)
        self.progress_every = max(lease / 3.0, 0.5)
        timeout = self.spec.get("timeout")
        self.deadline = time.monotonic() + float(timeout) if timeout else None
        self.pending: list[str] = []  # output decoded but not yet delivered, in order
        self.sent = 0  # characters of this attempt's output the API has taken: the next log's offset
        self.lock = threading.Lock()
        self.control: list[dict[str, Any]] = []  # the sandbox's reports (stderr, one JSON line each)
        self.started_reported = False
        self.signalled = False  # the runner stopped the sandbox itself (timeout, cancel, stale, going down)
        self.next_progress = 0.0
        self.next_log = 0.0
        self.next_marker = 0.0

    @property
    def work(self) -> Path:
        return self.tdir / "work"

    def _reader(self, stream: Any, out: Any) -> None:
        """Copy output to output.log and decode it as it comes.

        An incremental decoder keeps a character split across two reads whole, so the text,
        and the character offsets the log callbacks carry, do not depend on read boundaries.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: stream.read1(65536), b""):
            out.write(chunk)
            out.flush()
            text = decoder.decode(chunk)
            if text:
                with self.lock:
                    self.pending.append(text)
        tail = decoder.decode(b"", final=True)
        if tail:
            with self.lock:
                self.pending.append(tail)

    def _control_reader(self, stream: Any) -> None:
        """The sandbox's reports; a line that is not one (sudo refusing, a traceback) goes into the log."""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                with self.lock:
                    self.control.append(event)
                if event["event"] == "error":
                    self._note(f"sandbox: {event.get('message', '')}")
            elif line.strip():
                self._note(f"sandbox: {line}")

    def _note(self, message: str) -> None:
        """A line of the runner's own in the task's log."""
        with self.lock:
            self.pending.append(f"zonefarm: {message}\n")

    def _event(self, kind: str) -> dict[str, Any] | None:
        with self.lock:
            found = [e for e in self.control if e.get("event") == kind]
        return found[-1] if found else None

    def _report(self, event: str, **data: Any) -> dict[str, Any]:
        """A non-terminal report that may fail: the task runs on and a later report catches up.

        Giving up on the task because the API is briefly down would orphan its child and
        let the lease run it again; ``progress`` and ``finished`` move an ``assigned`` task
        on just as ``started`` does, so a missed one costs nothing.
        """
        try:
            return self.cb.send(event, **data)
        except CallbackFailed as exc:
            with open(self.tdir / "callbacks.log", "a") as fh:  # no secret in it: status lines only
                fh.write(f"{time.time():.3f} {exc}\n")
            return {}

    def _flush_log(self, patience: float | None = None) -> None:
        """Send pending output; what does not land stays pending (the last flush is as patient as finished).

        Each chunk carries its offset in this attempt's output: a chunk the API stored but
        whose answer was lost goes again with the same offset, and the API keeps it once.
        """
        with self.lock:
            data = "".join(self.pending)
            self.pending.clear()
        for i in range(0, len(data), LOG_CHUNK):
            chunk = data[i:i + LOG_CHUNK]
            try:
                self.cb.send("log", data=chunk, offset=self.sent, patience=patience)
            except CallbackFailed:
                with self.lock:  # keep what did not land for the next flush, in order
                    self.pending.insert(0, data[i:])
                return
            self.sent += len(chunk)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the sandbox's process group (through sudo, which relays it, when we are not root).

        The sandbox stops the task and hands its directory back; a runner that is not root
        may signal only sudo in that group, so a refused signal is not an error.
        """
        self.signalled = True
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _killed_reason(self) -> str | None:
        try:
            return (self.tdir / "killed").read_text().strip() or "cancelled"
        except OSError:
            return None

    def _request(self, steps: list[dict[str, Any]]) -> bytes:
        spec = self.spec
        env = task_env(spec)
        mode = spec.get("mode") or "task"
        if mode == "runner":  # a trusted program: it may know where the attempt is, and nothing secret
            env["ZONEFARM_ATTEMPT_DIR"] = str(self.tdir)
            env["ZONEFARM_CONTAINER_IMAGES"] = " ".join(self.config.container_images)
            if os.environ.get("PYTHONPATH"):  # where our own package is, when it is not installed
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return json.dumps({
            "id": spec["id"], "attempt": spec["attempt"], "steps": steps, "env": env, "cwd": spec.get("cwd"),
            "limits": spec.get("limits") or {}, "timeout": spec.get("timeout"), "mode": mode,
            "task": {"id": spec["id"], "attempt": spec["attempt"], "name": spec.get("name", ""),
                     "params": spec.get("params") or {}},
        }).encode()

    def _start(self, argv: list[str], env: dict[str, str], stdin: bytes | None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0,
                                cwd=str(self.tdir))
        (self.tdir / "child.pid").write_text(str(proc.pid))
        if stdin is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        return proc

    def _follow(self, proc: subprocess.Popen[bytes], out: Any, control: bool) -> None:
        """Run the supervision loop until ``proc`` ends: output, progress, timeout, kills, cancel."""
        reader = threading.Thread(target=self._reader, args=(proc.stdout, out), daemon=True)
        reader.start()
        ctl = None
        if control:
            ctl = threading.Thread(target=self._control_reader, args=(proc.stderr,), daemon=True)
        else:  # a trusted program's stderr is its output too
            ctl = threading.Thread(target=self._reader, args=(proc.stderr, out), daemon=True)
        ctl.start()
        try:
            if not self.started_reported:
                try:
                    proc.wait(START_GRACE)
                except subprocess.TimeoutExpired:
                    self._report("started")
                    self.started_reported = True
                now = time.monotonic()
                self.next_log, self.next_progress = now + LOG_INTERVAL, now + self.progress_every
                self.next_marker = now + 1.0
            while proc.poll() is None:
                try:
                    proc.wait(POLL)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if self.going_down.is_set() and proc.poll() is None:  # stop the task, do not hold the host up
                    self._kill(proc)
                    continue
                if self.deadline is not None and now >= self.deadline and proc.poll() is None:
                    self._mark_killed("timed_out")
                    self._kill(proc)
                    continue
                if now >= self.next_marker:  # zonefarm_kill signals too; this covers a lost signal
                    self.next_marker = now + 1.0
                    if self._killed_reason() and proc.poll() is None:
                        self._kill(proc)
                        continue
                if now >= self.next_log and self.pending:
                    self._flush_log()
                    self.next_log = now + LOG_INTERVAL
                if now >= self.next_progress and proc.poll() is None:
                    answer = self._report("progress")
                    self.started_reported = True
                    self.next_progress = now + self.progress_every
                    if answer.get("cancel"):
                        self._mark_killed("cancelled")
                        self._kill(proc)
        except StaleAttempt:
            self._kill(proc)
            raise
        finally:
            reader.join(10)
            ctl.join(10)

    def _take_back_work(self) -> None:
        """Move the task's directory, handed back to us by the sandbox, to ``work/`` in the attempt."""
        result = self._event("result") or self._event("started") or {}
        source = result.get("dir")
        if not isinstance(source, str) or not source or self.work.exists():
            return
        try:
            st = os.lstat(source)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            self._note(f"the task's directory {source} was not handed back; its outputs are not read")
            return
        try:
            os.rename(source, self.work)
        except OSError:
            shutil.move(source, self.work)

    def run(self) -> None:
        spec = self.spec
        reason = self._killed_reason()
        if reason:  # killed between launch and start: never run it
            self._report("started")
            self.cb.send("finished", exit_code=-int(signal.SIGTERM), outputs={}, reason=reason)
            return
        steps = spec_steps(spec)
        out = open(self.tdir / "output.log", "ab")
        failure: str | None = None
        try:
            if not steps:
                raise SandboxUnavailable("the task has nothing to run (no argv and no steps)")
            proc = self._start(sandbox_argv(self.config), sandbox_env(), self._request(steps))
        except (OSError, SandboxUnavailable) as exc:
            out.close()
            self._report("started")
            self._report("log", data=f"zonefarm: cannot start the task: {exc}\n", offset=0)
            self.cb.send("finished", exit_code=127, outputs={}, failure=str(exc)[:FAILURE_MAX])
            return
        try:
            self._follow(proc, out, control=True)
        except StaleAttempt:
            self._take_back_work()  # the sandbox stopped it; the directory is still ours to clean
            raise
        finally:
            self._remove_containers(out)
        result = self._event("result")
        error = self._event("error")
        code = proc.returncode
        if result is not None and isinstance(result.get("exit_code"), int):
            code = result["exit_code"]
            failure = result.get("reason") or None
        elif error is not None:
            failure = f"the task sandbox refused or could not run it: {error.get('message', '')}"
        self._take_back_work()
        if self._node_going_down(code, result, proc.returncode):
            self._leave_to_lease(out)
            return
        after = spec.get("after") or []
        if after and code == 0 and not self._killed_reason():
            code = self._after([str(a) for a in after], out)
            if self.going_down.is_set():  # the upload was cut short by the node going down
                self._leave_to_lease(out)
                return
        out.close()
        trusted_failure = self._trusted_failure()
        failure = failure or trusted_failure
        self._flush_log(patience=FINISHED_PATIENCE)
        self.cb.send("finished", **self._result(code, failure))

    def _node_going_down(self, code: int, result: dict[str, Any] | None, sandbox_rc: int | None) -> bool:
        """Whether this attempt ended because its node is going down: then it has no result.

        * the runner got SIGTERM (its unit stopped, a shutdown's kill of every process);
        * the sandbox was stopped by a signal the runner did not send: it says ``stopped``, or it
          died of one before it could say anything. A shutdown's final kill of every process
          reaches the sandbox and the runner together, and the sandbox may answer before the
          runner's own handler has run;
        * the task ended badly, not by a kill of zonefarm's, while systemd stops the host (the
          sandbox asked as root and says ``node_stopping``; the runner asks again).

        A clean exit 0 is a result even then: the task did run to its end.
        """
        if self.going_down.is_set():
            return True
        if code == 0 or self._killed_reason() or self.signalled:
            return False
        if result is not None:
            if result.get("stopped") is True:
                return True
        elif sandbox_rc is not None and sandbox_rc < 0:
            return True
        # the sandbox asked as root; the runner asks again for hosts where it could not (its own
        # look needs D-Bus when the runner is not root, so it can only add a "stopping")
        return bool((result or {}).get("node_stopping")) or node_stopping()

    def _leave_to_lease(self, out: Any) -> None:
        """Report nothing: the attempt's lease runs out and the reaper requeues the task elsewhere.

        A ``failed`` (or, as systemd saw a SIGTERM, ``succeeded``) report would end a task the
        host's shutdown cut short. Nothing here waits on the network.
        """
        note = "zonefarm: the node is going down: this attempt reports no result; its lease requeues the task\n"
        out.write(note.encode())
        out.close()
        (self.tdir / GOING_DOWN).write_text(f"{time.time():.3f}\n")

    def _remove_containers(self, out: Any) -> None:
        """After a stopped container task, remove its container from here (the node agent's
        account, which may use Docker). The program that ran it shares the sandbox's process
        group, and the kill's SIGKILL after its grace could end it mid-removal; the runner is
        outside that group and outlives it."""
        if self.spec.get("name") != "container" or not self._killed_reason():
            return
        try:
            subprocess.run([sys.executable, "-m", "control.node.tasktypes.container", "--remove",
                            str(self.spec["id"]), str(self.spec["attempt"])], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=out, env=sandbox_env(), timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self._note(f"could not remove the task's container: {exc}")

    def _after(self, argv: list[str], out: Any) -> int:
        """The type's trusted follow-up (pipeline upload), in the runner's own account, with the keys."""
        env = sandbox_env()
        env.update(ZONEFARM_TASK_ID=str(self.spec["id"]), ZONEFARM_ATTEMPT_DIR=str(self.tdir),
                   ZONEFARM_TASK_DIR=str(self.work), ZONEFARM_NODE_CONFIG=self.config.path)
        if self.config.ssh_key:
            env["ZONEFARM_SSH_KEY"] = self.config.ssh_key
        if self.config.known_hosts:
            env["ZONEFARM_KNOWN_HOSTS"] = self.config.known_hosts
        try:
            proc = self._start(argv, env, None)
        except OSError as exc:
            self._note(f"cannot start {argv[0]!r}: {exc}")
            return 127
        self._follow(proc, out, control=False)
        return proc.returncode

    def _trusted_failure(self) -> str | None:
        try:
            text = (self.tdir / "failure").read_text(errors="replace").strip()
        except OSError:
            return None
        return text[:FAILURE_MAX] or None

    def _mark_killed(self, reason: str) -> None:
        marker = self.tdir / "killed"
        if not marker.exists():
            marker.write_text(reason)

    def _outputs(self) -> dict[str, Any]:
        """``outputs.json`` of a trusted type program, else the task's own (a regular file, 1 MiB at most)."""
        for directory in (self.tdir, self.work):
            raw = read_task_file(directory, "outputs.json")
            if raw is None:
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}
        return {}

    def _result(self, code: int, failure: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {"exit_code": code, "outputs": self._outputs()}
        try:
            result["reason"] = (self.tdir / "killed").read_text().strip()
        except OSError:
            if failure:
                result["failure"] = failure[:FAILURE_MAX]
        return result


def _supervise(config: NodeConfig, tdir: Path, going_down: threading.Event | None = None) -> None:
    run = None
    try:
        run = TaskRun(config, tdir, going_down)
        run.run()
    except StaleAttempt:
        pass  # another attempt owns the task now; our report would be wrong
    except Exception as exc:  # noqa: BLE001 - recorded locally; the lease requeues the task
        (tdir / "runner.error").write_text(f"{type(exc).__name__}: {exc}\n")
        if run is not None and not run.going_down.is_set():  # say so rather than wait for the lease
            try:
                run.cb.send("finished", patience=REPORT_PATIENCE, exit_code=-1, outputs={},
                            failure=f"the runner failed: {type(exc).__name__}")
            except Exception:  # noqa: BLE001, S110 - the lease still requeues it
                pass
    finally:
        if run is not None:
            run.cb.close()
        (tdir / DONE).write_text(str(time.time()))  # the node agent prunes old attempts by it


def lower_priority(nice: int) -> None:
    """Run this runner and its tasks at ``nice``, before any thread or child exists (both inherit it).

    With the kernel's autogroup scheduling (the default on Debian when no cgroup manager
    takes over) CPU is shared between sessions first and nice only counts within one, so
    the runner's session is niced as well; its tasks stay in that session (their own
    process group, not their own session) and share its weight.
    """
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:
        pass
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))
    except OSError:
        pass  # no autogroup (cgroups decide), or not the session's owner: nice alone applies


def run_batch(config_path: str, dirs: list[str]) -> int:
    config = load_node_config(config_path)
    os.umask(0o077)  # logs, markers and moved work directories: the agent's alone
    lower_priority(config.task_nice)
    pid = str(os.getpid())
    for d in dirs:  # the fork launcher wrote it already; under systemd-run only we know it
        (Path(d) / "runner.pid").write_text(pid)
    going_down = threading.Event()
    previous = _on_sigterm(going_down)
    try:
        threads = [threading.Thread(target=_supervise, args=(config, Path(d), going_down)) for d in dirs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _on_sigterm(going_down: threading.Event) -> Any:
    """SIGTERM means the node is going down (the runner's unit is stopped, or a shutdown kills
    every process): each task is stopped and reports nothing, so its lease requeues it, and the
    runner ends within the kill grace instead of retrying reports into a dying network.

    Installed from the main thread only (Python's rule); returns the handler it replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda _sig, _frame: going_down.set())


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return run_batch(args.node_config, args.task_dirs)
    except NodeConfigError as exc:
        print(f"zonefarm runner: {exc}", file=sys.stderr)
        return 2


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run task attempts and report them by signed callbacks")
    run.add_argument("--node-config", required=True, help="the node's INI file (0600)")
    run.add_argument("task_dirs", nargs="+", help="task attempt directories holding spec.json")
    run.set_defaults(func=cmd_run)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("runner", help="worker-side task runner (started by zonefarm_launch)")
    _add_run(p.add_subparsers(dest="runner_command", required=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m control.node.runner run ...``, what zonefarm_launch starts: skips the CLI's plugin imports."""
    parser = argparse.ArgumentParser(prog="zonefarm-runner")
    _add_run(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

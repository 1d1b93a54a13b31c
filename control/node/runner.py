"""The worker-side task runner: started detached by ``zonefarm_launch``, reports by callbacks.

One runner process supervises every task of one launch (a node's batch in a dispatch
round), one thread per task: a Python process per task would cost ~10 MB and ~30 ms each
and 1,000 of them at once do not fit on a small worker. The hot path is standard
library only (subprocess, and ``control.node.client`` on http.client) so the first ``started``
callback leaves within ``START_GRACE`` of the launch. A task that ends within that grace
sends only ``finished`` (the API records its ``running`` event all the same): short tasks
are common (Z-Node's named functions, broadcasts), and one report instead of two halves
the write load they put on the control plane.

Per task attempt, under ``<workdir>/tasks/<id>/<attempt>/``:
``spec.json`` (0600, written by the launch module), ``runner.pid`` (the runner's pid),
``child.pid`` (the task's process group), ``output.log``, ``killed`` (a reason, written by
``zonefarm_kill`` before it signals, or by the runner itself on timeout or cancel),
``outputs.json`` (optional, written by the task), ``callbacks.log`` (reports that did not land,
status lines only) and ``done`` (when the runner let go of it;
the node agent deletes attempts done longer ago than ``task_dirs_keep_days``). The node key is read from the node
config file, never from argv or env, and the task's child gets a filtered environment.

The runner enforces the task timeout itself as well as obeying the dispatcher's kills, so
a task cannot outlive its timeout when the control plane is unreachable.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from control.node.client import TransportError, node_client
from control.node.config import NodeConfig, NodeConfigError, load_node_config

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


class Callbacks:
    """Signed callbacks for one task attempt, through the worker's API client, retried with a bound."""

    def __init__(self, config: NodeConfig, task_id: int, attempt: int) -> None:
        self.route = f"/tasks/{task_id}/callback"
        self.attempt = attempt
        self.client = node_client(config)

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
            time.sleep(pause)
            delay = min(delay * 2, 5.0)
        raise CallbackFailed(f"callback {event} failed: {last}")

    def close(self) -> None:
        self.client.close()


def _child_env(spec: dict[str, Any], tdir: Path, config: NodeConfig) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL",
                                                          "TZ", "USER", "LOGNAME")}
    base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    base.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    base["ZONEFARM_TASK_ID"] = str(spec["id"])
    base["ZONEFARM_TASK_DIR"] = str(tdir)
    if config.ssh_key:
        base["ZONEFARM_SSH_KEY"] = config.ssh_key
    if config.known_hosts:
        base["ZONEFARM_KNOWN_HOSTS"] = config.known_hosts
    return base


class TaskRun:
    """Runs one task attempt to its end and reports it."""

    def __init__(self, config: NodeConfig, tdir: Path) -> None:
        self.config = config
        self.tdir = tdir
        self.spec: dict[str, Any] = json.loads((tdir / "spec.json").read_text())
        self.cb = Callbacks(config, int(self.spec["id"]), int(self.spec["attempt"]))
        lease = float(self.spec.get("lease") or 60)
        self.progress_every = max(lease / 3.0, 0.5)
        timeout = self.spec.get("timeout")
        self.deadline = time.monotonic() + float(timeout) if timeout else None
        self.pending: list[str] = []  # output decoded but not yet delivered, in order
        self.sent = 0  # characters of this attempt's output the API has taken: the next log's offset
        self.lock = threading.Lock()

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
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _killed_reason(self) -> str | None:
        try:
            return (self.tdir / "killed").read_text().strip() or "cancelled"
        except OSError:
            return None

    def run(self) -> None:
        spec = self.spec
        argv = [str(a) for a in spec["argv"]]
        cwd = spec.get("cwd") or str(self.tdir)
        reason = self._killed_reason()
        if reason:  # killed between launch and start: never run it
            self._report("started")
            self.cb.send("finished", exit_code=-int(signal.SIGTERM), outputs={}, reason=reason)
            return
        try:
            out = open(self.tdir / "output.log", "ab")
            proc = subprocess.Popen(argv, cwd=cwd, env=_child_env(spec, self.tdir, self.config),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, process_group=0)
        except OSError as exc:
            self._report("started")
            self._report("log", data=f"zonefarm: cannot start {argv[0]!r}: {exc}\n", offset=0)
            self.cb.send("finished", exit_code=127, outputs={})
            return
        (self.tdir / "child.pid").write_text(str(proc.pid))
        reader = threading.Thread(target=self._reader, args=(proc.stdout, out), daemon=True)
        reader.start()
        try:
            try:
                proc.wait(START_GRACE)
            except subprocess.TimeoutExpired:
                self._report("started")
            next_log = time.monotonic() + LOG_INTERVAL
            next_progress = time.monotonic() + self.progress_every
            next_marker = time.monotonic() + 1.0
            while proc.poll() is None:
                try:
                    proc.wait(POLL)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline and proc.poll() is None:
                    self._mark_killed("timed_out")
                    self._kill(proc)
                    continue
                if now >= next_marker:  # zonefarm_kill signals too; this covers a lost signal
                    next_marker = now + 1.0
                    if self._killed_reason() and proc.poll() is None:
                        self._kill(proc)
                        continue
                if now >= next_log and self.pending:
                    self._flush_log()
                    next_log = now + LOG_INTERVAL
                if now >= next_progress and proc.poll() is None:
                    answer = self._report("progress")
                    next_progress = now + self.progress_every
                    if answer.get("cancel"):
                        self._mark_killed("cancelled")
                        self._kill(proc)
        except StaleAttempt:
            self._kill(proc)
            raise
        reader.join(10)
        out.close()
        self._flush_log(patience=FINISHED_PATIENCE)
        self.cb.send("finished", **self._result(proc.returncode))

    def _mark_killed(self, reason: str) -> None:
        marker = self.tdir / "killed"
        if not marker.exists():
            marker.write_text(reason)

    def _result(self, code: int) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        try:
            outputs = json.loads((self.tdir / "outputs.json").read_text())
        except (OSError, ValueError):
            pass
        result: dict[str, Any] = {"exit_code": code, "outputs": outputs}
        try:
            result["reason"] = (self.tdir / "killed").read_text().strip()
        except OSError:
            pass
        return result


def _supervise(config: NodeConfig, tdir: Path) -> None:
    run = None
    try:
        run = TaskRun(config, tdir)
        run.run()
    except StaleAttempt:
        pass  # another attempt owns the task now; our report would be wrong
    except Exception as exc:  # noqa: BLE001 - recorded locally; the lease requeues the task
        (tdir / "runner.error").write_text(f"{type(exc).__name__}: {exc}\n")
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
    lower_priority(config.task_nice)
    pid = str(os.getpid())
    for d in dirs:  # the fork launcher wrote it already; under systemd-run only we know it
        (Path(d) / "runner.pid").write_text(pid)
    threads = [threading.Thread(target=_supervise, args=(config, Path(d))) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


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

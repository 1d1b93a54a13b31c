"""Following a task: the progress line, waiting for the end, streaming the log.

On a terminal the progress is one line redrawn in place (state, a bar, percent, elapsed
time, and for a queued task why it is not starting). Anywhere else (a pipe, a file, CI
logs) it is a plain line printed only when the state, the whole percent or the reason
changes, so a log of ``--wait`` stays short however long the task runs. Progress goes
to stderr; stdout carries only the data (the log text, the JSON), so piping it stays clean.

The API has no push for task state, so this polls: one small GET per interval.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, TextIO

from control.client.api import ApiFailure, Client
from control.client.output import clean, duration, emit_json_line, parse_time

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
POLL = 0.5
BAR = 20
RIDE_OUT = 60.0  # seconds a follow keeps retrying while the API is unreachable or restarting
TRANSIENT = (None, 502, 503, 504)  # no answer, or a proxy's "the API is not there right now"


def elapsed(task: dict[str, Any], since: str = "created_at", now: float | None = None) -> float | None:
    """Seconds from ``since`` (submission by default: how long the user has been waiting) to the end, or now."""
    begin = parse_time(task.get(since))
    if begin is None:
        return None
    end = parse_time(task.get("finished_at")) or (time.time() if now is None else now)
    return max(end - begin, 0.0)


def percent(task: dict[str, Any]) -> tuple[float, str]:
    """The task's percent; a broadcast's is the share of its runs that have ended, which it also names."""
    children = task.get("children") or []
    if not children:
        return float(task.get("progress") or 0.0), ""
    ended = sum(1 for c in children if c.get("state") in TERMINAL)
    return 100.0 * ended / len(children), f" ({ended}/{len(children)} runs ended)"


def exit_status(task: dict[str, Any]) -> int:
    """The shell's exit status for a finished task: 0, its own exit code, or 1.

    A code outside 1..255 cannot be an exit status as it is: a negative one (killed by a
    signal, as Python reports it) becomes 128 + the signal as a shell would show it.
    """
    if task.get("state") == "succeeded":
        return 0
    code = task.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        if 1 <= code <= 255:
            return code
        if -64 <= code < 0:
            return 128 - code
    return 1


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.shown = False
        self.last: tuple[Any, ...] | None = None

    def update(self, task: dict[str, Any]) -> None:
        state = task.get("state", "?")
        pct, runs = percent(task)
        why = task.get("why") if state == "queued" else None
        where = (f" on {task['node']}" if task.get("node") else "") + runs
        head = f"task {task.get('id')} {state}"
        if self.tty:
            filled = int(round(pct / 100 * BAR))
            line = (f"{head:<22} [{'#' * filled}{'.' * (BAR - filled)}] {pct:5.1f}%  "
                    f"{duration(elapsed(task))}{where}" + (f"  ({why})" if why else ""))
            width = self._width()
            self.stream.write("\r\x1b[K" + clean(line)[: max(width - 1, 10)])
            self.stream.flush()
            self.shown = True
            return
        key = (state, int(pct), why)
        if key != self.last:
            self.last = key
            line = f"{head} {pct:.0f}% {duration(elapsed(task))}{where}" + (f" ({why})" if why else "")
            self.stream.write(clean(line) + "\n")
            self.stream.flush()

    def _width(self) -> int:
        """The width of the terminal the line is drawn on (stderr's, which may not be stdout's)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or shutil.get_terminal_size((80, 24)).columns  # 0: a terminal that never said

    def clear(self) -> None:
        """Take the live line off the screen (before other text is written to the terminal)."""
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def finish(self) -> None:
        """Keep the last line on screen and move below it."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def poll(client: Client, path: str, progress: Progress | None, **kw: Any) -> Any:
    """A GET that rides out an API restart: following a long task should not die of a short outage.

    Refusals (401, 403, 404 ...) still fail at once; only "no answer" is retried, for up
    to ``RIDE_OUT`` seconds.
    """
    deadline: float | None = None
    while True:
        try:
            return client.get(path, **kw)
        except ApiFailure as exc:
            if exc.status not in TRANSIENT:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + RIDE_OUT
                if progress is not None:
                    progress.clear()
                sys.stderr.write(f"{exc.message}; retrying for {RIDE_OUT:.0f} s\n")
                sys.stderr.flush()
            if now >= deadline:
                raise
            time.sleep(1.0)


def wait_task(client: Client, task_id: int, progress: Progress, interval: float = POLL) -> dict[str, Any]:
    """Poll until the task ends; the final task detail."""
    while True:
        task = poll(client, f"/tasks/{task_id}", progress)
        progress.update(task)
        if task["state"] in TERMINAL:
            progress.finish()
            return task
        time.sleep(interval)


def follow_log(client: Client, task_id: int, progress: Progress | None, out: TextIO,
               *, follow: bool, json_lines: bool = False, interval: float = POLL) -> dict[str, Any] | None:
    """Print the log from the start; with ``follow``, keep printing until the task ends.

    Returns the final task detail when following, else None. When the progress line and
    the log share a terminal, only whole lines of the log are printed between redraws,
    so the live line never lands in the middle of a task's line.
    """
    shared = progress is not None and progress.tty and out.isatty()
    offset, pending = 0, ""
    while True:
        chunk = poll(client, f"/tasks/{task_id}/log", progress, params={"offset": offset})
        text, offset = chunk["text"], chunk["next_offset"]
        last = chunk["complete"] or (not follow and not text)
        if json_lines:
            if text or last:
                emit_json_line(chunk)
        elif text:
            if progress is not None:
                progress.clear()
            if shared:
                pending += text
                whole, sep, pending = pending.rpartition("\n")
                if sep:
                    out.write(whole + "\n")
            else:
                out.write(text)
            out.flush()
        if last:
            break
        if text:
            continue  # there may be more already: read it before sleeping
        task = poll(client, f"/tasks/{task_id}", progress)
        if progress is not None:
            progress.update(task)
        if task["state"] not in TERMINAL:
            time.sleep(interval)
    if pending:
        out.write(pending)
        out.flush()
    if not follow:
        return None
    task = poll(client, f"/tasks/{task_id}", progress)
    if progress is not None:
        progress.update(task)
        progress.finish()
    return task

"""A recording callback server that checks every signature, for tests of the task runner alone.

The end-to-end path (real API, real ansible-runner jobs) is test_dispatch.py and the
security farms; this stands in for the API where only the runner's reports matter.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from control.node.signing import verify

SECRET = "runner-test-nodes-secret-0123456789"


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cancel: set[int] = set()
        self.stale: set[int] = set()
        self.down = False  # while set, every request is dropped unanswered, as by an API killed mid-request
        self.dropped = 0
        self.lock = threading.Lock()

    def of(self, task_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["task"] == task_id and (kind is None or e["event"] == kind)]

    def log(self, task_id: int) -> str:
        return "".join(e.get("data", "") for e in self.of(task_id, "log"))

    def wait_for(self, task_id: int, kind: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(task_id, kind)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {kind} callback for task {task_id}: {self.of(task_id)}")


@contextmanager
def recording_server() -> Iterator[tuple[Recorder, str]]:
    """The recorder and its URL while the block runs (test modules wrap it in a ``recorder`` fixture)."""
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if rec.down:
                with rec.lock:
                    rec.dropped += 1
                self.close_connection = True
                return
            try:
                node = verify(SECRET, dict(self.headers.items()), "POST", self.path, body)
            except ValueError:
                return self._answer(401, {"error": {"code": "unauthorized", "message": "bad signature"}})
            task_id = int(self.path.split("/")[-2])
            if task_id in rec.stale:
                return self._answer(403, {"error": {"code": "forbidden", "message": "not current"}})
            event = json.loads(body)
            with rec.lock:
                rec.events.append({"task": task_id, "node": node, **event})
            self._answer(200, {"cancel": task_id in rec.cancel})

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield rec, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()




def spec_dir(tmp_path: Path, task_id: int, argv: list[str], **extra: Any) -> Path:
    """An attempt directory with its spec.json, as zonefarm_launch writes it."""
    tdir = tmp_path / "work" / "tasks" / str(task_id) / "1"
    tdir.mkdir(parents=True)
    spec = {"id": task_id, "attempt": 1, "name": "shell", "argv": argv, "env": {}, "cwd": None, "lease": 3,
            "timeout": 60, **extra}
    (tdir / "spec.json").write_text(json.dumps(spec))
    return tdir

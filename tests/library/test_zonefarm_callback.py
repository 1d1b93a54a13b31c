"""zonefarm_callback: signed with the shared helper, the node's key from a private file only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from control.node.signing import HEADER_GENERATION, verify
from tests.library._kolla import ModuleFail, load_module

callback = load_module("zonefarm_callback")
SECRET = "callback-module-secret-0123456789"


class _Handler(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            node = verify(SECRET, dict(self.headers.items()), "POST", self.path, body)
        except ValueError as exc:
            self.send_response(401)
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"code": "unauthorized", "message": str(exc)}}).encode())
            return
        self.received.append({"node": node, "path": self.path, "body": json.loads(body),
                              "generation": self.headers[HEADER_GENERATION]})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"cancel": true}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _config(tmp_path: Path, url: str, secret: str = SECRET, mode: int = 0o600, generation: int = 4) -> str:
    path = tmp_path / "node.ini"
    path.write_text(f"[node]\nname = wk1\nnode_key = {secret}\nkey_generation = {generation}\napi_url = {url}\n")
    path.chmod(mode)
    return str(path)


def test_signed_finished_callback(run_module: Any, server: str, tmp_path: Path) -> None:
    result = run_module(callback, {"config_path": _config(tmp_path, server), "task_id": 12, "attempt": 2,
                                   "event": "finished", "exit_code": 0, "outputs": {"n": 1}})
    assert result["status"] == 200 and result["response"] == {"cancel": True}
    assert _Handler.received == [{"node": "wk1", "path": "/api/v1/tasks/12/callback", "generation": "4",
                                  "body": {"event": "finished", "attempt": 2, "exit_code": 0, "outputs": {"n": 1}}}]
    assert SECRET not in json.dumps(result)


def test_wrong_secret_is_refused_by_server(run_module: Any, server: str, tmp_path: Path) -> None:
    with pytest.raises(ModuleFail, match="HTTP 401") as failed:
        run_module(callback, {"config_path": _config(tmp_path, server, secret="not-the-right-secret-000"),
                              "task_id": 1, "attempt": 1, "event": "started"})
    assert failed.value.result["status"] == 401


def test_readable_config_is_refused(run_module: Any, server: str, tmp_path: Path) -> None:
    with pytest.raises(ModuleFail, match="chmod 600"):
        run_module(callback, {"config_path": _config(tmp_path, server, mode=0o644), "task_id": 1,
                              "attempt": 1, "event": "started"})
    assert _Handler.received == []


def test_finished_needs_exit_code(run_module: Any, server: str, tmp_path: Path) -> None:
    with pytest.raises(ModuleFail, match="exit_code"):
        run_module(callback, {"config_path": _config(tmp_path, server), "task_id": 1, "attempt": 1,
                              "event": "finished"})


def test_unreachable_api_fails_clearly(run_module: Any, tmp_path: Path) -> None:
    with pytest.raises(ModuleFail, match="callback failed"):
        run_module(callback, {"config_path": _config(tmp_path, "http://127.0.0.1:9"), "task_id": 1,
                              "attempt": 1, "event": "log", "data": "x", "timeout": 2})

"""A real webhook receiver on 127.0.0.1 (http.server in a thread) that checks every signature.

Paths choose how it answers: ``/ok`` 200; ``/flaky`` 500 to its first two requests, then 200;
``/slow`` waits ``slow`` seconds before answering; ``/trickle`` answers a byte every 0.2 s (each
read in time, the whole far too late); ``/redirect`` 302 to ``/ok``; anything else 404.
It checks each delivery's signature with the secret registered for its webhook
(``X-Zonefarm-Webhook``), as a real receiver would, with ``control.node.signing.verify_payload``.
Given a server TLS context it speaks https.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from control.node.signing import HEADER_WEBHOOK, verify_payload


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: str  # "ok", or why the signature check failed

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.secrets: dict[int, str] = {}  # webhook id -> its secret, as its owner keeps it
        self.requests: list[Received] = []
        self.slow = 3.0
        self.lock = threading.Lock()
        self.url = ""

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{len(self.at(path))} requests at {path}, waited for {count}: {self.requests}")

    def check(self, headers: dict[str, str], body: bytes) -> str:
        try:
            secret = self.secrets[int(headers.get(HEADER_WEBHOOK, "0"))]
        except (KeyError, ValueError):
            return "unknown webhook"
        try:
            verify_payload(secret, headers, body)
        except ValueError as exc:
            return str(exc)
        return "ok"


@contextmanager
def receiving(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 for the block; https with ``tls`` (a server context)."""
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = dict(self.headers.items())
            got = Received(self.path, headers, body, rec.check(headers, body))
            with rec.lock:
                rec.requests.append(got)
                seen = sum(1 for r in rec.requests if r.path == self.path)
            if self.path == "/flaky" and seen <= 2:
                return self._answer(500)
            if self.path == "/slow":
                time.sleep(rec.slow)
            if self.path == "/redirect":
                return self._answer(302, {"Location": f"{rec.url}/ok"})
            if self.path == "/trickle":
                return self._trickle()
            self._answer(200 if self.path in ("/ok", "/flaky", "/slow") else 404)

        def _trickle(self) -> None:
            """An answer one byte every 0.2 s: each read is quick, the whole never ends in time."""
            try:
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 60 + b"\r\nContent-Length: 0\r\n\r\n":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass  # the sender cut it

        def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up (timed out) first

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    rec.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()

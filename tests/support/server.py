"""A real HTTP server on loopback serving the real app, in a thread of the test process.

Tests that need the production server (gunicorn) start ``zonefarm api`` as a
subprocess instead; this one exists so each test can get a fresh database cheaply.
"""

from __future__ import annotations

import logging
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logging.getLogger("tests.http").debug(format, *args)


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.httpd = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

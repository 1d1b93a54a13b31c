"""Serve the API with gunicorn (threaded workers).

Measured on this 2-core machine (BENCHMARKS.md): gunicorn served several times the
requests of waitress for the same Bottle + peewee read.

A waiting long-poll holds a thread; ``control.web.longpoll`` lets them take at most half of
each worker's threads (``Settings.long_poll_slots``), so health checks and node callbacks
always find one. ``serve`` hands the workers the thread count gunicorn really runs with.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from control.core.config import Settings

WORKER_CLASS = "gthread"


class _LocklessQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; ``SimpleQueue.put`` is thread-safe on its own.

    With a plain StreamHandler every request thread wrote its access line to stderr while
    holding the handler's lock: py-spy showed a fifth of a worker's samples queued there
    at 32 connections.
    """

    def createLock(self) -> None:  # noqa: N802 - logging's name
        self.lock = None  # type: ignore[assignment]


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    if _listener is not None and _listener._thread is not None:
        _listener.stop()


def configure_logging(level: str) -> None:
    """Log lines to stderr from one writer thread per process (call after the fork)."""
    global _listener
    if _listener is None:
        atexit.register(_stop_listener)  # flush what is queued when the worker exits
    else:
        _stop_listener()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, stream)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_LocklessQueueHandler(records)]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn run in-process; ``load`` is called in each worker after the fork."""

    def __init__(self, options: dict[str, Any], load: Callable[[], Any]) -> None:
        self.options = options
        self._load = load
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._load()


def gunicorn_options(settings: Settings, *, workers: int | None = None,
                     threads: int | None = None, worker_class: str = WORKER_CLASS) -> dict[str, Any]:
    """The options `zonefarm api` runs with; bench/ serves its baseline with the same ones."""
    return {
        "bind": settings.listen,
        "workers": workers or settings.api_workers,
        "threads": threads or settings.api_threads,
        "worker_class": worker_class,
        "timeout": max(120, settings.changes_max_wait + 30),
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "zonefarm-api",
        "limit_request_line": 8190,
        # TLS in gunicorn itself: no proxy to deploy, and the key stays readable by the service only.
        "certfile": settings.tls_cert or None,
        "keyfile": settings.tls_key or None,
    }


def load_api(settings: Settings) -> Any:
    # Built in each worker after fork: database pools must not cross a fork.
    from control.farm.webhooks.delivery import Sender
    from control.web.app import build_app
    configure_logging(settings.log_level)
    app = build_app(settings)
    # Webhook deliveries go out from a thread of each worker, never a request's (docs/webhooks.md).
    Sender(settings).start()
    return app


def serve(settings: Settings, *, workers: int | None = None, threads: int | None = None) -> None:
    settings.require_secrets()
    settings.require_transport()
    # Before the fork: every worker writes its request histograms there (control.web.metrics).
    from control.web.metrics import prepare_multiprocess_dir
    prepare_multiprocess_dir(str(Path(settings.data_dir) / "metrics"))
    options = gunicorn_options(settings, workers=workers, threads=threads)
    # the long-poll cap is half the threads a worker has: the ones given here, if any
    settings = dataclasses.replace(settings, api_workers=options["workers"], api_threads=options["threads"])
    if settings.long_poll_slots < settings.changes_max_polls:
        logging.getLogger("zonefarm.api").warning(
            "changes_max_polls=%d lowered to %d, half of the %d threads per worker",
            settings.changes_max_polls, settings.long_poll_slots, settings.api_threads)
    Gunicorn(options, lambda: load_api(settings)).run()

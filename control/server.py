"""Serve the API with gunicorn (threaded workers, so long-polls don't starve the pool).

Measured on this 2-core machine (BENCHMARKS.md): gunicorn served several times the
requests of waitress for the same Bottle + peewee read.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from control.config import Settings


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(message)s")


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in each worker after fork: database pools must not cross a fork.
        from control.api.app import build_app
        configure_logging(self.settings.log_level)
        return build_app(self.settings)


def serve(settings: Settings, *, workers: int | None = None, threads: int | None = None) -> None:
    settings.require_secrets()
    options = {
        "bind": settings.listen,
        "workers": workers or settings.api_workers,
        "threads": threads or settings.api_threads,
        "worker_class": "gthread",
        "timeout": max(120, settings.changes_max_wait + 30),
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "zonefarm-api",
        "limit_request_line": 8190,
    }
    _Gunicorn(settings, options).run()

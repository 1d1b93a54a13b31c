"""The WSGI application: the REST API under /api/v1 (routes from the route table, JSON errors),
the dashboard at /, ``GET /metrics`` (``control.web.metrics``), one JSON access log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import bottle

from control.core.config import Settings
from control.core.db import init_database
from control.core.errors import error_body
from control.web.dashboard import build_dashboard
from control.web.metrics import MetricsApp
from control.web.routes import RESOURCES  # noqa: F401  (declares every route)
from control.web.routing import install

log = logging.getLogger("zonefarm.access")


def _json_error(err: bottle.HTTPError) -> str:
    bottle.response.content_type = "application/json"
    status = err.status_code
    if status == 405:
        message = f"method {bottle.request.method} not allowed on {bottle.request.path}"
    elif status == 404:
        message = f"no route {bottle.request.path}"
    elif status >= 500:
        logging.getLogger("zonefarm.api").error("unhandled error on %s %s: %s",
                                                bottle.request.method, bottle.request.path,
                                                err.exception, exc_info=err.exception)
        message = "internal error"
    else:
        message = str(err.body or "error")
    return error_body(status, message)


class AccessLog:
    """One JSON line per request; only method, path, status, timing and who, never headers."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status_holder: list[str] = []

        def _start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_holder.append(status)
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, _start)
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(json.dumps({
                    "ts": round(time.time(), 3),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status_holder[0].split()[0]) if status_holder else 0,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "who": environ.get("zonefarm.principal", "-"),
                    "remote": environ.get("REMOTE_ADDR"),
                }))


class Site:
    """``/api/...`` to the REST application, ``/metrics`` to Prometheus, everything else to the
    dashboard (which calls the REST application in-process for every read and action)."""

    def __init__(self, api: Callable[..., Iterable[bytes]], dashboard: Callable[..., Iterable[bytes]],
                 metrics: Callable[..., Iterable[bytes]] | None = None) -> None:
        self.api = api
        self.dashboard = dashboard
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics" and self.metrics is not None:
            return self.metrics(environ, start_response)
        if path == "/api" or path.startswith("/api/"):
            return self.api(environ, start_response)
        return self.dashboard(environ, start_response)


def build_app(settings: Settings, *, init_db: bool = True) -> Callable[..., Iterable[bytes]]:
    if init_db:
        init_database(settings.database_url, settings.db_pool_size)
    app = bottle.Bottle(catchall=True)
    app.default_error_handler = _json_error  # type: ignore[method-assign]
    install(app, settings)
    return AccessLog(Site(app, build_dashboard(app, settings), MetricsApp(settings)))

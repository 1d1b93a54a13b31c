"""Liveness and readiness in one: healthy means the database answers."""

from __future__ import annotations

from typing import Any

from control import __version__
from control.core.db import database
from control.core.errors import ApiError
from control.migrations import current_version
from control.web.routing import Context, route

HEALTH = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string"}, "version": {"type": "string"},
    "schema_version": {"type": "integer"}, "database": {"type": "string"}}}


@route("GET", "/healthz", summary="Health check", tag="meta", auth="none",
       responses={200: HEALTH, 503: HEALTH})
def healthz(ctx: Context) -> dict[str, Any]:
    try:
        version = current_version()
    except Exception as exc:  # the database is down: report, don't crash
        raise ApiError(503, f"database unavailable: {type(exc).__name__}") from None
    if version == 0:
        raise ApiError(503, "database schema not initialised; run `zonefarm db upgrade`")
    return {"status": "ok", "version": __version__, "schema_version": version,
            "database": type(database.obj).__name__}

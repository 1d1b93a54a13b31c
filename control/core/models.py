"""Shared model base: every table lives on the process-wide database proxy."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import peewee

from control.core.db import database


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """Times are stored as epoch seconds (cheap lease arithmetic) and shown as ISO 8601."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


class JSONField(peewee.TextField):
    """JSON stored as text so SQLite and PostgreSQL hold it the same way."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False

"""The change feed: every registry write appends one numbered change in its transaction.

On PostgreSQL an advisory transaction lock serialises appends, so change numbers
commit in order and a reader resuming from N can never skip a number that commits
later. SQLite already has a single writer.
"""

from __future__ import annotations

from typing import Any

from control.db import database, is_postgres
from control.models import Change

_FEED_LOCK = 0x7A6F6E65  # "zone"


def record(entity: str, entity_id: int, op: str, data: dict[str, Any] | None = None, *,
           space_id: int | None = None, provider_id: int | None = None,
           group_id: int | None = None, user_id: int | None = None) -> Change:
    if is_postgres():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_FEED_LOCK,))
    return Change.create(entity=entity, entity_id=entity_id, op=op, data=data,
                         space_id=space_id, provider_id=provider_id, group_id=group_id,
                         user_id=user_id)

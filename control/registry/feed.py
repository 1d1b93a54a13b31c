"""The change feed: every registry write appends one numbered change in its transaction.

On PostgreSQL an advisory transaction lock serialises appends, so change numbers
commit in order and a reader resuming from N can never skip a number that commits
later. SQLite already has a single writer.

Who sees what is decided by the change's scope columns against the reader's
*audience* (computed from the registry as it is now, see ``control.registry.access.audience``):

* a change scoped to a provider (``provider_id`` set: the provider itself and the
  supports it holds, including their revocation) is seen by that provider only, and
  by users only when it also names one of their spaces (support of their space);
* otherwise a change naming a space is seen when the space is in the audience;
* otherwise one naming a group when the group is; otherwise one naming only a user
  when the user is. A change naming nothing in the audience is not seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import peewee

from control.core import actor as actors
from control.core.db import database, is_postgres, write_transaction
from control.core.models import now
from control.registry.models import Change, Provider

_FEED_LOCK = 0x7A6F6E65  # "zone"


def serialise() -> None:
    """Hold the feed lock until the transaction ends (PostgreSQL; SQLite has one writer).

    Writers that check the graph before changing it (group nesting) take it first, so
    two concurrent nestings cannot both pass the cycle check.
    """
    if is_postgres():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_FEED_LOCK,))


def record(entity: str, entity_id: int, op: str, data: dict[str, Any] | None = None, *,
           space_id: int | None = None, provider_id: int | None = None,
           group_id: int | None = None, user_id: int | None = None, actor: str | None = None) -> Change:
    """Append one change; ``actor`` defaults to who is acting now (``control.core.actor``)."""
    serialise()
    return Change.create(entity=entity, entity_id=entity_id, op=op, data=data,
                         space_id=space_id, provider_id=provider_id, group_id=group_id,
                         user_id=user_id, actor=actor or actors.current())


@dataclass(frozen=True)
class Audience:
    """What one reader may see; ``everything`` is the administrator."""

    everything: bool = False
    provider_id: int | None = None
    spaces: frozenset[int] = field(default_factory=frozenset)
    groups: frozenset[int] = field(default_factory=frozenset)
    users: frozenset[int] = field(default_factory=frozenset)


def _in(column: peewee.Field, ids: Iterable[int]) -> peewee.Expression:
    return column.in_(sorted(ids))


def visible(audience: Audience) -> peewee.Expression | None:
    """The WHERE clause selecting the changes the audience sees (None: all of them)."""
    if audience.everything:
        return None
    unscoped = Change.space_id.is_null()
    by_space = Change.space_id.is_null(False) & _in(Change.space_id, audience.spaces)
    by_group = unscoped & Change.group_id.is_null(False) & _in(Change.group_id, audience.groups)
    by_user = (unscoped & Change.group_id.is_null() & Change.user_id.is_null(False)
               & _in(Change.user_id, audience.users))
    general = by_space | by_group | by_user
    if audience.provider_id is not None:
        return (Change.provider_id == audience.provider_id) | (Change.provider_id.is_null() & general)
    return general


def last_seq() -> int:
    """The newest change number (0 when none); every number up to it has committed."""
    return Change.select(peewee.fn.MAX(Change.seq)).scalar() or 0


def read(audience: Audience, since: int, upto: int, limit: int) -> tuple[list[Change], int]:
    """Visible changes in (since, upto], oldest first, and the number to resume from.

    The resume number covers changes filtered out, so a reader never rescans them;
    when the page is full it is the last change returned.
    """
    query = Change.select().where(Change.seq > since, Change.seq <= upto)
    clause = visible(audience)
    if clause is not None:
        query = query.where(clause)
    rows = list(query.order_by(Change.seq).limit(limit))
    if len(rows) == limit:
        return rows, rows[-1].seq
    return rows, upto


ACK_REFRESH = 60.0  # seconds: an unchanged position is written again at most this often


def acknowledge(provider_id: int, since: int) -> None:
    """Record that a provider asked for changes after ``since``: it has applied everything
    up to it. ``GET /metrics`` shows the lag; an unchanged position is rewritten only every
    ``ACK_REFRESH`` seconds, so a long-polling provider costs no write per poll."""
    t = now()
    with write_transaction():
        (Provider.update(feed_acked_seq=since, feed_polled_at=t)
         .where(Provider.id == provider_id,
                Provider.feed_acked_seq.is_null() | (Provider.feed_acked_seq != since)
                | Provider.feed_polled_at.is_null() | (Provider.feed_polled_at < t - ACK_REFRESH))
         .execute())

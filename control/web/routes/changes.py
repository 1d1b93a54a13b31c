"""``GET /changes``: the numbered change feed, filtered to the caller, with long-polling.

Audiences (``control.registry.access.audience``; ``control.registry.feed`` has the matching rule):

* **root** sees every change;
* a **provider** sees its region of interest: itself, its supports (and their
  revocation), the spaces it supports, their groups (nested too) and their users;
* a **user** sees the spaces and groups it is an effective member of, and itself.

The audience is computed from the registry as it is when the changes are read, so a
provider that gains support of a space sees that space's changes from then on, and
one whose support is revoked still sees the revocation (it is scoped to the provider).

Long-polling holds no database connection while it waits: each round borrows a
pooled connection, checks the newest change number (one cheap query), reads only
when it moved, and gives the connection back before sleeping. Polling the database
keeps it correct across gunicorn workers and processes.

A waiting poll does hold a worker thread, so it first takes a slot (``control.web.longpoll``):
past the per-process or per-caller cap it is answered at once with 429 and Retry-After.
"""

from __future__ import annotations

import time

from control.core.db import connection, database
from control.core.errors import ApiError, conflict, forbidden
from control.core.models import iso
from control.farm.retention import feed_pruned_seq
from control.registry import feed
from control.registry.access import audience
from control.registry.identity import Principal
from control.registry.models import Change
from control.registry.schemas import ChangeOut, ChangesOut
from control.web.longpoll import SLOTS
from control.web.routing import Context, Query, route

POLL_INTERVAL = 0.2


def change_out(change: Change) -> ChangeOut:
    return ChangeOut(seq=change.seq, ts=iso(change.ts), entity=change.entity,
                     entity_id=change.entity_id, op=change.op, data=change.data,
                     space_id=change.space_id, provider_id=change.provider_id,
                     group_id=change.group_id, user_id=change.user_id)


def _round(principal: Principal, since: int, limit: int) -> tuple[list[Change], int]:
    """One look at the feed: the visible changes after ``since`` and where to resume."""
    top = feed.last_seq()
    if top <= since:
        return [], since
    return feed.read(audience(principal), since, top, limit)


def _not_ahead(since: int) -> None:
    """A number past the newest change was never handed out: the reader's saved position
    belongs to another (or a rebuilt) database, and waiting would hide that forever."""
    top = feed.last_seq()
    if since > top:
        raise conflict(f"since: {since} is ahead of the feed, whose newest change is {top}; "
                       "the zone's database was replaced, resynchronise from 0")


def _not_pruned(since: int) -> None:
    """Changes after ``since`` were deleted by the pruner (retention_feed_days): reading on
    would silently skip them, so the reader must resynchronise from 0."""
    pruned = feed_pruned_seq()
    if 0 < since < pruned:
        raise ApiError(410, f"since: changes up to {pruned} are no longer kept (retention_feed_days); "
                       "resynchronise from 0")


@route("GET", "/changes", summary="Changes after `since` in the caller's region; long-polls "
       "up to `timeout` seconds (capped by changes_max_wait) when there are none", tag="changes",
       query={"since": Query(int, 0, "Resume after this change number (last_seq)", 0, None),
              "timeout": Query(float, 0.0, "Seconds to wait when nothing is new (at most "
                               "changes_max_wait); a wait past the server's long-poll caps is "
                               "answered 429 with Retry-After", 0, 86400),
              "limit": Query(int, 100, "Most changes returned", 1, 1000)},
       responses={200: ChangesOut})
def list_changes(ctx: Context) -> ChangesOut:
    since, limit = ctx.query["since"], ctx.query["limit"]
    if ctx.principal.kind not in ("root", "provider", "user"):
        raise forbidden(f"a {ctx.principal.kind} token may not read the change feed")
    _not_ahead(since)
    _not_pruned(since)
    if ctx.principal.provider is not None:
        feed.acknowledge(ctx.principal.provider.id, since)
    changes, resume = _round(ctx.principal, since, limit)
    deadline = time.monotonic() + min(ctx.query["timeout"], ctx.settings.changes_max_wait)
    if not changes and time.monotonic() < deadline:
        s = ctx.settings
        with SLOTS.hold(ctx.principal.describe(), s.long_poll_slots, s.changes_max_polls_per_principal):
            database.close()  # back to the pool: a waiting poll holds no connection
            while not changes and (left := deadline - time.monotonic()) > 0:
                time.sleep(min(POLL_INTERVAL, left))
                with connection():
                    changes, resume = _round(ctx.principal, resume, limit)
    return ChangesOut(changes=[change_out(c) for c in changes], last_seq=max(resume, since))

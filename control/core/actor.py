"""Who is acting, for the audit trail: every change-feed entry and task event records it.

The actor is set once where a unit of work starts (the route wrapper from the request's
principal, the dispatcher for its round) and read where rows are written
(``control.registry.feed.record``, ``control.farm.states``), so services need not pass it
through every call; a writer may still name one explicitly. Values: ``root``,
``user:<id>``, ``provider:<id>``, ``node:<name>``, ``dispatcher:<id>``, ``system``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("zonefarm_actor", default="system")
MAX_LENGTH = 200


def current() -> str:
    """The actor of the unit of work running in this thread (``system`` when none was set)."""
    return _ACTOR.get()


@contextmanager
def acting(actor: str) -> Iterator[None]:
    """Attribute the writes made inside the block to ``actor``."""
    token = _ACTOR.set(actor[:MAX_LENGTH])
    try:
        yield
    finally:
        _ACTOR.reset(token)


def assume(actor: str) -> None:
    """Name the actor for the rest of the enclosing ``acting`` block (the route wrapper opens
    one per request, then learns who is calling once it has authenticated them)."""
    _ACTOR.set(actor[:MAX_LENGTH])

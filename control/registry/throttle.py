"""Failed-login throttling, per username and per client address, kept in the database.

Every API process and host counts the same failures (a per-process counter would give
each gunicorn worker its own allowance). A key past its limit within the window is
refused before any password is hashed, and stays refused, right password or not, until
enough of its failures have left the window: ``retry_after`` says how long that is.
Refused attempts are not counted, so a lock-out ends at most one window after the
guessing stops. A successful login clears its username's failures, not its address's.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.core.models import now
from control.registry.models import LoginFailure


@dataclass(frozen=True)
class Limit:
    key: str
    most: int


def user_key(username: str) -> str:
    return f"user:{username}"[:100]


def address_key(address: str) -> str:
    return f"addr:{address}"[:100]


def login_limits(username: str, address: str, *, per_user: int, per_address: int) -> list[Limit]:
    limits = [Limit(user_key(username), per_user)]
    if address:
        limits.append(Limit(address_key(address), per_address))
    return limits


def retry_after(limits: list[Limit], window: float) -> int | None:
    """Seconds until every key is back under its limit; ``None`` when none is over it.

    A key is over when it has ``most`` failures in the window; it is back under when the
    ``most``-th newest of them leaves the window.
    """
    t = now()
    wait = 0.0
    for limit in limits:
        row = (LoginFailure.select(LoginFailure.ts)
               .where(LoginFailure.key == limit.key, LoginFailure.ts > t - window)
               .order_by(LoginFailure.ts.desc()).offset(limit.most - 1).limit(1).first())
        if row is not None:
            wait = max(wait, row.ts + window - t)
    return int(wait) + 1 if wait > 0 else None


def record_failure(limits: list[Limit], window: float) -> None:
    """Count one failure against every key; drop the failures the window has left behind."""
    t = now()
    LoginFailure.delete().where(LoginFailure.ts <= t - window).execute()
    LoginFailure.insert_many([{"key": limit.key, "ts": t} for limit in limits]).execute()


def forget(key: str) -> None:
    LoginFailure.delete().where(LoginFailure.key == key).execute()

"""One database handle for the whole process, chosen by URL.

SQLite is the embedded default (WAL, foreign keys, busy timeout); PostgreSQL is the
scale-out path. Both are pooled so a request thread does not pay for a new
connection each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from control.config import ConfigError

database = peewee.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": 10000,
    "synchronous": "normal",
    "cache_size": -16000,
}


def make_database(url: str, pool_size: int = 16) -> peewee.Database:
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = unquote(parsed.path)
        if url.startswith("sqlite:////"):
            path = "/" + path.lstrip("/")
        elif parsed.netloc:
            path = parsed.netloc + path
        if not path or path == "/":
            raise ConfigError(f"database URL {url!r} names no SQLite file")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return PooledSqliteDatabase(
            path, pragmas=SQLITE_PRAGMAS, max_connections=pool_size, stale_timeout=300,
            timeout=10, check_same_thread=False)
    if scheme in ("postgres", "postgresql"):
        if not parsed.path.strip("/"):
            raise ConfigError(f"database URL {url!r} names no database")
        return PooledPostgresqlDatabase(
            parsed.path.lstrip("/"),
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            host=parsed.hostname, port=parsed.port or 5432,
            max_connections=pool_size, stale_timeout=300, timeout=10)
    raise ConfigError(f"unsupported database URL scheme {parsed.scheme!r}; use sqlite:/// or postgresql://")


def init_database(url: str, pool_size: int = 16) -> peewee.Database:
    db = make_database(url, pool_size)
    database.initialize(db)
    return db


def is_postgres() -> bool:
    return isinstance(database.obj, peewee.PostgresqlDatabase)


@contextmanager
def connection() -> Iterator[None]:
    """Borrow a pooled connection for the duration of a unit of work."""
    opened = database.connect(reuse_if_open=True)
    try:
        yield
    finally:
        if opened:
            database.close()

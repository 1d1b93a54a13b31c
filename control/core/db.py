"""One database handle for the whole process, chosen by URL.

SQLite is the embedded default (WAL, foreign keys, busy timeout); PostgreSQL is the
scale-out path. Both are pooled so a request thread does not pay for a new
connection each time.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from control.core.config import ConfigError

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
        # BEGIN IMMEDIATE: a deferred transaction that reads and then writes cannot wait for
        # the write lock in WAL mode (SQLITE_BUSY at once, busy_timeout or not), so concurrent
        # writes failed with "database is locked". Taking the lock up front makes them queue.
        db = PooledSqliteDatabase(
            path, pragmas=SQLITE_PRAGMAS, max_connections=pool_size, stale_timeout=300,
            timeout=10, check_same_thread=False, lock_type="IMMEDIATE")
        db.zonefarm_write_lock = None if path == ":memory:" else f"{path}-writelock"  # type: ignore[attr-defined]
        return db
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


class _WriteLock:
    """Queues SQLite writers of every thread and process on one file lock (``flock``).

    SQLite's own busy handler polls with sleeps growing to 100 ms, so with dozens of
    concurrent writers an unlucky one waited seconds (p99 of ``POST /groups`` over 1 s at
    32 connections, see BENCHMARKS.md). Waiting in the kernel hands the lock over as soon
    as it is free. Re-entrant per thread; the file is opened again after a fork.
    """

    def __init__(self) -> None:
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        self._fd: int | None = None
        self._fd_owner: tuple[int, str] | None = None

    def _file(self, path: str) -> int:
        if self._fd_owner != (os.getpid(), path):
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fd_owner = (os.getpid(), path)
        assert self._fd is not None
        return self._fd

    @contextmanager
    def held(self, path: str) -> Iterator[None]:
        with self._thread_lock:
            depth = getattr(self._local, "depth", 0)
            fd = self._file(path)
            if depth == 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
                if depth == 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)


_WRITE_LOCK = _WriteLock()


@contextmanager
def write_transaction() -> Iterator[None]:
    """A transaction for a request that writes; on SQLite, writers queue first (see ``_WriteLock``)."""
    path = getattr(database.obj, "zonefarm_write_lock", None)
    if path is None:
        with database.atomic():
            yield
        return
    with _WRITE_LOCK.held(path), database.atomic():
        yield

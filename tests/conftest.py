"""Shared fixtures: both databases, a live API on loopback, and the OpenAPI-checking client.

Every test that takes ``api`` runs twice: on SQLite and on a real PostgreSQL server the
suite starts itself (``tests/support/pg.py``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# argon2id at the production cost (64 MiB, 3 passes) would add a minute to the suite's logins;
# this process and its in-process servers hash cheaply. `zonefarm` subprocesses run without it
# (tests/support/apiproc.clean_env drops ZONEFARM_*), at the real cost.
os.environ.setdefault("ZONEFARM_TEST_PASSWORD_HASH", "cheap")

from control.core.config import Settings  # noqa: E402
from control.core.db import database, init_database  # noqa: E402
from control.migrations import upgrade  # noqa: E402
from control.web.app import build_app  # noqa: E402
from tests.support.apiproc import ApiProcess  # noqa: E402
from tests.support.client import Api  # noqa: E402
from tests.support.farm import Farm  # noqa: E402
from tests.support.pg import PgCluster  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402

ROOT_SECRET = "root-secret-for-tests-0123456789"
NODES_SECRET = "nodes-secret-for-tests-abcdefghij"
# Images container tasks may name in API tests (the container_images setting; empty allows none).
TEST_IMAGES = "busybox busybox:* zonefarm-test/*"
_counter = itertools.count()


def _close_db() -> None:
    obj = getattr(database, "obj", None)
    if obj is not None:
        close_all = getattr(obj, "close_all", None)
        if close_all:
            close_all()
        else:
            obj.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster().start()
    cluster.sql("CREATE DATABASE zf_template")
    init_database(cluster.url("zf_template"))
    upgrade()
    _close_db()
    yield cluster
    _close_db()
    cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    init_database(f"sqlite:///{path}")
    upgrade()
    _close_db()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "zonefarm.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
    else:
        with pg_database(request.getfixturevalue("pg_cluster"), template="zf_template") as url:
            yield url


@contextmanager
def pg_database(cluster: PgCluster, template: str | None = None) -> Iterator[str]:
    """A new database on the suite's PostgreSQL (a copy of ``template``, else empty): its URL,
    dropped afterwards."""
    name = f"zf_test_{os.getpid()}_{next(_counter)}"
    cluster.sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield cluster.url(name)
    finally:
        _close_db()
        cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of a test server: the suite's secrets, its database, a data directory in the
    test's ``tmp_path``, any free port; ``overrides`` on top."""
    return Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                    data_dir=str(tmp_path / "data"), listen="127.0.0.1:0", **overrides)


def farm_test_settings(db_url: str, tmp_path: Path, lease: int, **overrides: Any) -> Settings:
    """Settings of a test with a farm (the ``farm`` fixture): task leases of ``lease`` seconds
    and a dispatch round every 0.2 s, so a lost runner is noticed within seconds."""
    return make_settings(db_url, tmp_path, changes_max_wait=10, task_lease=lease, node_lease=120,
                         dispatch_interval=0.2, artifacts_keep=3, **overrides)


@contextmanager
def serving(settings: Settings) -> Iterator[LiveServer]:
    """The app of ``settings`` served on loopback in this process; stopped afterwards."""
    server = LiveServer(build_app(settings)).start()
    try:
        yield server
    finally:
        server.stop()
        _close_db()


@contextmanager
def own_server(db_url: str, tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    """A live server with settings of the test's choosing, on the test's database."""
    with serving(make_settings(db_url, tmp_path, **overrides)) as server:
        yield Api(server.url, ROOT_SECRET)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path, changes_max_wait=10, container_images=TEST_IMAGES)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    with serving(settings) as server:
        yield server


@pytest.fixture
def api(live_server: LiveServer) -> Api:
    return Api(live_server.url, ROOT_SECRET)


@pytest.fixture
def farm(api: Api, live_server: LiveServer, settings: Settings, tmp_path: Path) -> Iterator[Farm]:
    """Worker nodes on this machine for the live server; a module that takes it gives its
    ``settings`` fixture a farm's (``farm_test_settings``)."""
    f = Farm(api, live_server.url, settings, tmp_path, lease=settings.task_lease, nodes_secret=NODES_SECRET)
    yield f
    f.stop()


@pytest.fixture
def started() -> Iterator[list[ApiProcess]]:
    """Collects every ``zonefarm api`` process a test starts and stops the ones still running."""
    procs: list[ApiProcess] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.stop()

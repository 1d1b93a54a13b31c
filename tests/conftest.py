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
from pathlib import Path

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
from tests.support.client import Api  # noqa: E402
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
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        name = f"zf_test_{os.getpid()}_{next(_counter)}"
        cluster.sql(f"CREATE DATABASE {name} TEMPLATE zf_template")
        yield cluster.url(name)
        _close_db()
        cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                    data_dir=str(tmp_path / "data"), listen="127.0.0.1:0", changes_max_wait=10,
                    container_images=TEST_IMAGES)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(build_app(settings)).start()
    yield server
    server.stop()
    _close_db()


@pytest.fixture
def api(live_server: LiveServer) -> Api:
    return Api(live_server.url, ROOT_SECRET)

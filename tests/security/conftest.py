"""Fixtures of the task-sandbox attacks: a farm laid out as the roles lay out a worker.

The farm gets its own API server (``sec_server``), built from settings with short leases
that match its dispatchers', so nothing here changes the ``settings``/``api`` fixtures the
other security tests (grants) use. The farm tests run on SQLite only: what they attack is
the worker side (sandbox, runner, launch module) and the dispatcher's inventory, which do
not depend on the database; API checks (the log cap) run on both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control.core.config import Settings
from control.web.app import build_app
from tests.conftest import ROOT_SECRET, _close_db
from tests.support.client import Api
from tests.support.secfarm import SecFarm, open_farm, sec_settings, traversable_base
from tests.support.server import LiveServer


@pytest.fixture
def base() -> Iterator[Path]:
    with traversable_base() as path:
        yield path


@pytest.fixture
def farm_settings(db_url: str, tmp_path: Path) -> Settings:
    return sec_settings(db_url, tmp_path)


@pytest.fixture
def sec_server(farm_settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(build_app(farm_settings)).start()
    yield server
    server.stop()
    _close_db()


@pytest.fixture
def sec_api(sec_server: LiveServer) -> Api:
    return Api(sec_server.url, ROOT_SECRET)


@pytest.fixture
def farm(sec_api: Api, sec_server: LiveServer, farm_settings: Settings, base: Path) -> Iterator[SecFarm]:
    f = open_farm(sec_api, sec_server.url, farm_settings, base)
    yield f
    f.stop()

"""Fixtures of the task-sandbox attacks: a farm laid out as the roles lay out a worker.

The farm gets its own API server (``sec_api``), built from settings with short leases
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
from tests.conftest import ROOT_SECRET, serving
from tests.support.client import Api
from tests.support.secfarm import SecFarm, open_farm, sec_settings, traversable_base


@pytest.fixture
def base() -> Iterator[Path]:
    with traversable_base() as path:
        yield path


@pytest.fixture
def farm_settings(db_url: str, tmp_path: Path) -> Settings:
    return sec_settings(db_url, tmp_path)


@pytest.fixture
def sec_api(farm_settings: Settings) -> Iterator[Api]:
    """The root's client of the farm's own API server."""
    with serving(farm_settings) as server:
        yield Api(server.url, ROOT_SECRET)


@pytest.fixture
def farm(sec_api: Api, farm_settings: Settings, base: Path) -> Iterator[SecFarm]:
    f = open_farm(sec_api, sec_api.base, farm_settings, base)
    yield f
    f.stop()

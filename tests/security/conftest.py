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
from tests.support.secfarm import SecFarm, open_farm, role_dropin, sec_settings, traversable_base
from tests.support.server import LiveServer
from tests.support.sshd import Sshd


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


@pytest.fixture
def storage() -> Iterator[tuple[Path, Path]]:
    """The provider's storage root (the chroot, root's 0755) and its spaces directory."""
    with traversable_base("zonefarm-sec-sftp-") as base:
        root = base / "storage"
        root.mkdir(mode=0o755)
        spaces = root / "spaces"
        spaces.mkdir(mode=0o755)
        yield root, spaces


@pytest.fixture
def provider_sshd(farm: SecFarm, storage: tuple[Path, Path], tmp_path: Path) -> Iterator[Sshd]:
    """A provider's sshd with the role's drop-in, and node wk1 holding the upload key it authorizes."""
    root, spaces = storage
    work = farm.add_node("wk1")
    key = farm.config_dir("wk1") / "upload_ed25519"
    server = Sshd(tmp_path / "sshd", match=role_dropin("root", root, spaces),
                  authorized=[(key.with_suffix(".pub")).read_text().strip()])
    # the node trusts this provider's host key (as the worker role writes upload_known_hosts)
    config = farm.config_dir("wk1") / "node.ini"
    known = server.base / "known_hosts"
    config.write_text(config.read_text().replace(f"ssh_key = {key}", f"ssh_key = {key}\nknown_hosts = {known}"))
    assert work.is_dir()
    yield server
    server.stop()

"""Fixtures for the container lab: the Docker engine, the base image, and one lab per session.

The lab is session-scoped because nine systemd containers take tens of seconds to boot; its
finalizer removes every container and the network even when a test or the start-up fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab import image as lab_image
from tests.lab.attach import attached
from tests.lab.lab import HOSTS, Lab
from tests.support.dockerd import ensure_docker


@pytest.fixture(scope="session")
def docker_engine() -> None:
    ensure_docker()


@pytest.fixture(scope="session")
def lab_image_tag(docker_engine: None) -> str:
    """The base image, built once (debootstrap + apt) and then reused while its tag exists."""
    return lab_image.build()


@pytest.fixture(scope="session")
def lab(lab_image_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """All nine hosts, up and answering SSH; removed at the end of the session."""
    kept = attached(lab_image_tag)  # a lab kept running by hand (tests/lab/attach.py): left running
    if kept is not None:
        yield kept
        return
    the_lab = Lab(lab_image_tag, tmp_path_factory.mktemp("lab"))
    try:
        the_lab.start(HOSTS)
        yield the_lab
    finally:
        the_lab.stop()


# The lab is shared by the whole session: tests that look at bare hosts run before the ones
# that deploy onto them.
_ORDER = ("test_lab_image", "test_lab_hosts", "test_lab_storage", "test_lab_deploy", "test_lab_tls", "test_lab_e2e",
          "test_lab_sandbox", "test_lab_faults", "test_lab_secrets")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reorder the lab's own tests among the slots they already hold; leave every other test be."""
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")

    slots = [i for i, item in enumerate(items) if module(item) in _ORDER]
    ordered = sorted((items[i] for i in slots), key=lambda item: _ORDER.index(module(item)))
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item

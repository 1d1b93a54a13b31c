"""The lab's base image: every package the roles install is in it, and it is rebuilt only when
its package list changes."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.lab import image

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.timeout(900)]


def test_every_package_is_installed(lab_image_tag: str) -> None:
    client = docker.from_env()
    try:
        out = client.containers.run(
            lab_image_tag, ["dpkg-query", "-W", "-f", "${Package} ${Status}\n"], remove=True,
            entrypoint=[]).decode()
    finally:
        client.close()
    installed = {line.split()[0] for line in out.splitlines() if line.endswith("install ok installed")}
    missing = set(image.packages()) - installed
    assert not missing, f"not in the image: {sorted(missing)}"
    # The roles' own packages are part of the list, so their apt tasks find them installed.
    assert image.role_packages() <= installed


def test_image_boots_systemd_and_keeps_no_host_keys(lab_image_tag: str) -> None:
    client = docker.from_env()
    try:
        attrs = client.images.get(lab_image_tag).attrs
        out = client.containers.run(lab_image_tag, ["sh", "-c", "ls /etc/ssh; cat /etc/machine-id"],
                                    remove=True).decode()
    finally:
        client.close()
    assert attrs["Config"]["Cmd"] == ["/lib/systemd/systemd"]
    # Every container makes its own host keys and machine id at boot: none are baked in.
    assert "ssh_host_" not in out
    assert out.strip().endswith("sshd_config.d")


def test_unchanged_list_reuses_the_image(lab_image_tag: str) -> None:
    client = docker.from_env()
    try:
        before = client.images.get(lab_image_tag).id
        assert image.build() == lab_image_tag
        assert client.images.get(lab_image_tag).id == before
    finally:
        client.close()
    assert image.base_tarball().is_file(), "the debootstrap rootfs is cached for the next build"


def test_tag_follows_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    original = image.tag()
    assert image.tag() == original
    monkeypatch.setattr(image, "EXTRA_PACKAGES", (*image.EXTRA_PACKAGES, "htop"))
    assert image.tag() != original
    monkeypatch.setattr(image, "EXTRA_PACKAGES", tuple(reversed(image.EXTRA_PACKAGES[:-1])))
    assert image.tag() == original, "order must not matter"


def test_role_packages_reads_apt_tasks_and_defaults(tmp_path: Path) -> None:
    tasks = tmp_path / "demo/tasks"
    tasks.mkdir(parents=True)
    (tasks / "install.yml").write_text(
        "- name: Install\n  ansible.builtin.apt:\n    name: [nfs-ganesha, '{{ demo_extra }}']\n"
        "- name: Block\n  block:\n    - name: One more\n      apt:\n        name: sshfs\n")
    defaults = tmp_path / "demo/defaults"
    defaults.mkdir(parents=True)
    (defaults / "main.yml").write_text("demo_packages:\n  - rsync\ndemo_port: 22\n")
    # A templated name cannot be resolved here and is left out, not guessed.
    assert image.role_packages(tmp_path) == {"nfs-ganesha", "sshfs", "rsync"}

"""A farm laid out as the roles lay out a worker, for the task-sandbox attacks (tests/security).

The attacks must meet the barriers a deployment has, and only those: the farm's files sit
under a base directory every account may traverse (a pytest ``tmp_path`` lies under
``/tmp/pytest-of-root``, mode 0700, which would stop a task before any barrier of ours did).
Each node gets, as the worker role writes them:

* ``node.ini`` (0600, the node's key), ``upload_ed25519`` (0600, the upload key) and
  ``zonefarm.ini`` (0600, the platform's config with the root secret) in its config directory;
* its work directory, where the runner keeps task attempts.

Directories are left 0755 on purpose, looser than the roles' 0750: what keeps a task out
must then be the task's own identity against 0600 and 0700, which is what is under test.
The runner runs as root here (the local deployment and the test suite): exactly the case
where a task must be dropped to an account of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jinja2

from control.core.config import Settings
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.client import Api
from tests.support.farm import Farm
from tests.support.sshd import Sshd

LEASE = 4
ROOT = Path(__file__).resolve().parents[2]
SANDBOX_TASKS = Path("/var/lib/zonefarm-sandbox/tasks")  # the default sandbox policy's task directories


@contextmanager
def traversable_base(prefix: str = "zonefarm-sec-") -> Iterator[Path]:
    """A fresh directory (0755, root's) in /var/lib, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/lib"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sec_settings(db_url: str, base: Path, **extra: Any) -> Settings:
    """The API's settings for these farms: short leases, the test images allowed where the setting exists."""
    values: dict[str, Any] = dict(database=db_url, root_secret=ROOT_SECRET, nodes_secret=NODES_SECRET,
                                  data_dir=str(base / "data"), listen="127.0.0.1:0", changes_max_wait=10,
                                  task_lease=LEASE, node_lease=120, dispatch_interval=0.2, artifacts_keep=3)
    if "container_images" in Settings.__dataclass_fields__:
        values["container_images"] = "zonefarm-test/*"
    values.update(extra)
    return Settings(**values)


class SecFarm(Farm):
    """A ``Farm`` whose nodes carry the deployment's secret files next to their node.ini."""

    def add_node(self, name: str, region: str = "default", concurrency: int = 40, **extra: Any) -> Path:
        conf = self.tmp / "nodes" / name
        conf.mkdir(parents=True, exist_ok=True)
        for directory in (conf.parent, conf):  # 0755 whatever the umask (see the module's docstring)
            directory.chmod(0o755)
        key = conf / "upload_ed25519"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"zonefarm-upload@{name}",
                            "-f", str(key)], check=True)
        key.chmod(0o600)
        platform = conf / "zonefarm.ini"
        platform.write_text(f"[zonefarm]\nroot_secret = {ROOT_SECRET}\nnodes_secret = {NODES_SECRET}\n")
        platform.chmod(0o600)
        extra.setdefault("ssh_key", str(key))
        work = super().add_node(name, region=region, concurrency=concurrency, **extra)
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)
        return work

    def config_dir(self, name: str) -> Path:
        return self.tmp / "nodes" / name

    def attempt_dir(self, name: str, task_id: int, attempt: int = 1) -> Path:
        return self.nodes[name] / "tasks" / str(task_id) / str(attempt)

    def spec(self, name: str, task_id: int, attempt: int = 1) -> dict[str, Any]:
        import json

        return json.loads((self.attempt_dir(name, task_id, attempt) / "spec.json").read_text())


def open_farm(api: Api, url: str, settings: Settings, base: Path) -> SecFarm:
    return SecFarm(api, url, settings, base, lease=LEASE, nodes_secret=NODES_SECRET)


def agent_uid() -> int:
    """The runner's (the node agent's) account in these tests: whoever runs pytest, root here."""
    return os.geteuid()


def role_dropin(user: str, root: Path, spaces: Path) -> str:
    """The provider role's sshd drop-in, rendered as the role renders it."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - an sshd config, not HTML
    env.filters["relpath"] = os.path.relpath
    template = env.from_string((ROOT / "roles/provider/templates/sftp.conf.j2").read_text())
    return template.render(ansible_managed="test", provider_sftp_user=user, provider_storage_root=str(root),
                           provider_storage_path=str(spaces))


def support_spaces(farm: SecFarm, sshd: Sshd, spaces: Path, names: tuple[str, ...], *,
                   provider: str = "prov1", storage_path: str | None = None) -> list[int]:
    """Alice's spaces ``names``, each supported by one provider uploading to ``sshd``; their ids.

    ``storage_path`` is what the provider registers (default: ``spaces``, where the SFTP account
    starts); each space's directory is made under ``spaces``, as the provider agent would.
    """
    api = farm.api
    registered = api.post("/providers", token=api.root, json={
        "name": provider, "domain": "prov1.example.org", "admin_email": "ops@example.org",
        "sftp_host": "127.0.0.1", "sftp_port": sshd.port, "sftp_user": "root",
        "storage_path": str(spaces) if storage_path is None else storage_path})
    assert registered.status_code == 201, registered.text
    pid, provider_token = registered.json()["provider"]["id"], registered.json()["token"]
    _, token = api.user_with_token("alice")
    ids = []
    for name in names:
        space = api.post("/spaces", token=token, json={"name": name})
        assert space.status_code == 201, space.text
        ticket = api.post(f"/spaces/{space.json()['id']}/support_tokens", token=token, json={})
        assert ticket.status_code == 201, ticket.text
        support = api.post(f"/providers/{pid}/supports", token=provider_token,
                           json={"token": ticket.json()["token"], "size": 1 << 20})
        assert support.status_code == 201, support.text
        ids.append(int(space.json()["id"]))
        (spaces / str(ids[-1])).mkdir(exist_ok=True)  # what the provider agent makes for a supported space
    return ids

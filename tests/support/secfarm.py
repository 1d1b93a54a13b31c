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

from control.core.config import Settings
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.client import Api
from tests.support.farm import Farm

LEASE = 4
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

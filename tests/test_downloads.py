# ruff: noqa: F811  (pytest fixtures imported from tests.test_dispatch are parameters here)
"""Downloading a task's landed outputs through the API: streamed from the provider's real
sshd (SFTP, the API's own key and known_hosts), whole, by range, refused past the end, to
strangers and for names that are not a landed file (API on SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from control.core.config import Settings
from control.core.db import connection
from control.farm import downloads
from control.farm.models import TaskFile
from control.node.client import node_client
from control.node.config import load_node_config
from tests.conftest import farm_test_settings
from tests.support.farm import Farm
from tests.support.sshd import Sshd
from tests.test_dispatch import sftp_storage, sshd  # noqa: F401
from tests.test_uploads import _alices_space, _provider, _round, _support

MIB = 1 << 20


@pytest.fixture
def settings(db_url: str, tmp_path: Path, sshd: Sshd) -> Settings:
    """The API reads provider storage with the key the test sshd authorizes, checking its host key."""
    return farm_test_settings(db_url, tmp_path, 60, storage_ssh_key=str(sshd.base / "client_key"),
                              storage_known_hosts=str(sshd.base / "known_hosts"))


def _landed(farm: Farm, sshd: Sshd, storage: Path) -> tuple[int, str, dict[str, bytes]]:
    """Alice's space on prov-eu; a pipeline task whose two outputs are on the provider's storage and
    reported landed by the node running it. Returns the task id, Alice's token and the files."""
    sid, alice = _alices_space(farm)
    _support(farm, alice, sid, _provider(farm, sshd, storage, "prov-eu", "eu"), 64 * MIB)
    work = farm.add_node("wk1", region="eu")
    kept, _ = _round(farm, sid, {"generate": [["true"]], "outputs": ["out/data.bin", "b.txt"]})
    task_id = kept[0].id
    files = {"out/data.bin": os.urandom(600_000), "b.txt": b"hello\n"}
    wk1 = node_client(load_node_config(work.parent / "node.ini"))
    for name, data in files.items():
        path = storage / str(sid) / f"task-{task_id}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        resp = wk1.post(f"/tasks/{task_id}/files", {"attempt": 1, "name": name, "size": len(data),
                                                    "sha256": hashlib.sha256(data).hexdigest()})
        assert resp.status == 200, resp.json()
    (storage / str(sid) / "secret.txt").write_text("not a task output")
    return task_id, alice, files


def test_download_whole_ranges_and_refusals(farm: Farm, sshd: Sshd, sftp_storage: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads, "WINDOW", 100_000)  # several windows of pipelined reads per file
    task_id, alice, files = _landed(farm, sshd, sftp_storage)
    api, data = farm.api, files["out/data.bin"]
    size, url = len(data), f"/tasks/{task_id}/files/out/data.bin"
    digest = hashlib.sha256(data).hexdigest()

    whole = api.get(url, token=alice)
    assert whole.status_code == 200, whole.text
    assert whole.content == data and hashlib.sha256(whole.content).hexdigest() == digest
    listed = {f["name"]: f for f in api.get(f"/tasks/{task_id}/files", token=alice).json()["items"]}
    assert whole.headers["ETag"] == f'"{listed["out/data.bin"]["sha256"]}"' == f'"{digest}"'
    assert (whole.headers["Accept-Ranges"], whole.headers["Content-Length"]) == ("bytes", str(size))
    assert whole.headers["Content-Disposition"] == "attachment; filename*=UTF-8''data.bin"
    assert api.get(f"/tasks/{task_id}/files/b.txt", token=api.root).content == b"hello\n"

    def ranged(spec: str) -> Any:
        return api.get(url, token=alice, headers={"Range": spec})

    for spec, (start, end) in {"bytes=10-99999": (10, 99999), f"bytes={size - 5}-": (size - 5, size - 1),
                               "bytes=-7": (size - 7, size - 1), f"bytes={size - 3}-{10 * size}": (size - 3, size - 1),
                               "bytes=-999999999": (0, size - 1)}.items():
        part = ranged(spec)
        assert part.status_code == 206, (spec, part.text)
        assert part.content == data[start:end + 1], spec
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{size}", spec
        assert part.headers["ETag"] == f'"{digest}"'
    for spec in (f"bytes={size}-", f"bytes={size}-{size + 9}", "bytes=-0"):
        refused = ranged(spec)
        assert refused.status_code == 416, (spec, refused.text)
        assert refused.headers["Content-Range"] == f"bytes */{size}"
        assert refused.json()["error"]["code"] == "range_not_satisfiable"
    for spec in ("bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=x-"):  # not served: the whole file (RFC 9110)
        ignored = ranged(spec)
        assert (ignored.status_code, ignored.content) == (200, data), spec

    # Only who may see the task; names select a landed file's record and are never paths.
    _, mallory = api.user_with_token("mallory")
    assert api.get(url, token=mallory).status_code == 403
    assert api.get(url).status_code == 401
    assert api.get(f"/tasks/{task_id + 1000}/files/b.txt", token=api.root).status_code == 404
    for name in ("%2E%2E/secret.txt", "out/%2E%2E/b.txt", "out/../../secret.txt", "..%2Fsecret.txt", "data.bin",
                 f"task-{task_id}/b.txt", "%2Fetc%2Fpasswd", "b.txt%00", "b.txt/"):
        resp = api.get(f"/tasks/{task_id}/files/{name}", token=alice)
        assert resp.status_code == 404, (name, resp.status_code, resp.text)


def test_the_record_and_the_provider_must_agree(farm: Farm, sshd: Sshd, sftp_storage: Path) -> None:
    """A record whose path leaves its task's directory is refused without connecting; a file that
    changed size since it landed is 409, one that is gone 410, an unreachable provider 503."""
    task_id, alice, files = _landed(farm, sshd, sftp_storage)
    api = farm.api
    with connection():
        row = TaskFile.get(TaskFile.task == task_id, TaskFile.name == "b.txt")
        assert downloads.remote_path(row).endswith(f"/task-{task_id}/b.txt")
        TaskFile.update(path="../secret.txt").where(TaskFile.id == row.id).execute()
    tampered = api.get(f"/tasks/{task_id}/files/b.txt", token=alice)
    assert tampered.status_code == 409 and "is not its task's" in tampered.json()["error"]["message"]

    [stored] = sftp_storage.glob(f"*/task-{task_id}/out/data.bin")
    stored.write_bytes(files["out/data.bin"] + b"x")
    changed = api.get(f"/tasks/{task_id}/files/out/data.bin", token=alice)
    assert changed.status_code == 409 and "is not the 600000 bytes recorded" in changed.text
    stored.unlink()
    assert api.get(f"/tasks/{task_id}/files/out/data.bin", token=alice).status_code == 410
    sshd.stop()
    down = api.get(f"/tasks/{task_id}/files/out/data.bin", token=alice)
    assert down.status_code == 503 and "prov-eu's storage is unreachable" in down.json()["error"]["message"]

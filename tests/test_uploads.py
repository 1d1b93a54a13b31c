# ruff: noqa: F811  (pytest fixtures imported from tests.test_dispatch are parameters here)
"""Where uploads go and quotas at upload time: the dispatcher's choice among a space's
providers, a task failing before it runs when no provider has room, and the upload step
refusing outputs that would take the space past its size (real dispatcher, ansible-runner
jobs, node runner and sshd; API on SQLite and PostgreSQL, the end-to-end round on SQLite)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from control.core.db import connection
from control.farm import claims, uploads
from control.farm.models import Task
from control.farm.uploads import Candidate, NoRoom, choose
from control.node.client import node_client
from control.node.config import load_node_config
from control.node.tasktypes import pipeline
from tests.support.apiproc import clean_env
from tests.support.farm import ROOT, Farm
from tests.support.sshd import Sshd

# The end-to-end fixtures of tests/test_dispatch.py (a real dispatcher, nodes and sshd).
from tests.test_dispatch import settings, sftp_storage, sshd  # noqa: F401  (farm: tests/conftest.py)

MIB = 1 << 20


def cand(pid: int, name: str, region: str | None = None, size: int = 100, used: int | None = 0,
         over: bool = False, load: int = 0) -> Candidate:
    return Candidate(provider_id=pid, name=name, region=region, size=size, used=used, over_quota=over, load=load,
                     sftp_host="h", sftp_port=22, sftp_user="u", storage_path="/s")


def test_choice_region_then_free_space_then_load() -> None:
    eu = cand(1, "eu", "eu", size=100, used=90)
    us = cand(2, "us", "us", size=100, used=0)
    best, why = choose(7, "eu", None, [us, eu])
    assert best is eu and "in the worker's region 'eu'" in why and "not us" in why
    best, why = choose(7, "asia", None, [eu, us])
    assert best is us and "none with room in the worker's region 'asia'" in why
    busy, idle = cand(3, "busy", size=50, load=4), cand(4, "idle", size=50, load=1)
    assert choose(7, None, None, [busy, idle])[0] is idle
    assert choose(7, None, None, [cand(5, "a", size=60), cand(6, "b", size=50)])[0].name == "a"
    # full or over quota: never chosen, said why
    full = cand(8, "full", "eu", size=100, used=100)
    over = cand(9, "over", "eu", size=100, used=50, over=True)
    best, why = choose(7, "eu", None, [full, over, us])
    assert best is us and "full (no room)" in why and "over (no room)" in why
    # named by the task: only that one
    assert choose(7, "eu", "us", [eu, us])[0] is us
    with pytest.raises(NoRoom, match="provider 'nope' \\(named by the task\\) does not support space 7"):
        choose(7, "eu", "nope", [eu, us])
    with pytest.raises(NoRoom, match="no upload target has room for space 7: provider full: size 100 bytes, "
                                     "used 100; provider over: size 100 bytes, used 50 \\(over quota\\)"):
        choose(7, "eu", None, [full, over])
    with pytest.raises(NoRoom, match="no provider supports space 7"):
        choose(7, "eu", None, [])


def _provider(farm: Farm, sshd: Sshd, storage: Path, name: str, region: str | None) -> dict[str, Any]:
    api = farm.api
    resp = api.post("/providers", token=api.root, json={
        "name": name, "domain": f"{name}.example.org", "admin_email": "ops@example.org", "sftp_host": "127.0.0.1",
        "sftp_port": sshd.port, "sftp_user": "root", "storage_path": str(storage), "region": region})
    assert resp.status_code == 201, resp.text
    assert resp.json()["provider"]["region"] == region
    return dict(resp.json())


def _support(farm: Farm, user_token: str, space_id: int, reg: dict[str, Any], size: int) -> None:
    api = farm.api
    ticket = api.post(f"/spaces/{space_id}/support_tokens", token=user_token, json={})
    assert ticket.status_code == 201, ticket.text
    resp = api.post(f"/providers/{reg['provider']['id']}/supports", token=reg["token"],
                    json={"token": ticket.json()["token"], "size": size})
    assert resp.status_code == 201, resp.text


def _report(farm: Farm, reg: dict[str, Any], space_id: int, used: int) -> dict[str, Any]:
    resp = farm.api.post(f"/providers/{reg['provider']['id']}/usage", token=reg["token"],
                         json={"spaces": [{"space_id": space_id, "used": used, "files": 1}]})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _alices_space(farm: Farm) -> tuple[int, str]:
    """Alice (a new user) and her space "climate": its id and her token."""
    _, token = farm.api.user_with_token("alice")
    space = farm.api.post("/spaces", token=token, json={"name": "climate"})
    assert space.status_code == 201, space.text
    return int(space.json()["id"]), token


def _two_providers(farm: Farm, sshd: Sshd, storage: Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Space "climate" supported by prov-eu (region eu, 2 MiB) and prov-us (region us, 8 MiB),
    both the same sshd (remote paths are relative to its chroot)."""
    sid, token = _alices_space(farm)
    eu = _provider(farm, sshd, storage, "prov-eu", "eu")
    us = _provider(farm, sshd, storage, "prov-us", "us")
    _support(farm, token, sid, eu, 2 * MIB)
    _support(farm, token, sid, us, 8 * MIB)
    return sid, eu, us


def _choice(farm: Farm, task_id: int) -> dict[str, Any]:
    [event] = [e for e in farm.events(task_id) if (e["data"] or {}).get("upload")]
    return event


def _round(farm: Farm, sid: int, params: dict[str, Any]) -> tuple[list[Task], dict[int, dict[str, Any]]]:
    """Submit one pipeline task, claim it and plan its upload, in this process (no dispatcher)."""
    task = farm.submit("pipeline", params, space=sid)
    claimed = claims.claim("test", 10)
    assert [t.id for t in claimed] == [task["id"]]
    with connection():
        return uploads.plan(claimed)


def test_the_dispatcher_picks_the_region_then_room_and_fails_a_task_with_nowhere_to_upload(
        farm: Farm, sshd: Sshd, sftp_storage: Path) -> None:
    sid, eu, us = _two_providers(farm, sshd, sftp_storage)
    work = farm.add_node("wk1", region="eu")
    params = {"generate": [["true"]], "outputs": ["r.txt"]}
    kept, targets = _round(farm, sid, params)
    first = kept[0].id
    _node_reports_files(farm, work, first)
    assert targets[first]["provider"] == "prov-eu" and targets[first]["size"] == 2 * MIB
    event = _choice(farm, first)
    assert event["data"]["upload"]["provider"] == "prov-eu"
    assert event["reason"].startswith("uploads go to provider prov-eu for space climate: in the worker's region 'eu'")
    assert {c["provider"]: c["load"] for c in event["data"]["candidates"]} == {"prov-eu": 1, "prov-us": 0}

    # prov-eu's agent finds the space over its size there: the next task goes to prov-us.
    assert _report(farm, eu, sid, 3 * MIB)["over_quota"] == [sid]
    kept, targets = _round(farm, sid, params)
    assert targets[kept[0].id]["provider"] == "prov-us"
    reason = _choice(farm, kept[0].id)["reason"]
    assert "none with room in the worker's region 'eu'" in reason and "not prov-eu (no room)" in reason

    # Both full: the task fails before it runs a stage, saying so.
    _report(farm, us, sid, 8 * MIB)
    kept, targets = _round(farm, sid, params)
    assert kept == [] and targets == {}
    [failed] = farm.api.get("/tasks", token=farm.api.root, params={"state": "failed"}).json()["items"]
    assert failed["reason"].startswith("no upload target has room for space climate")
    assert f"provider prov-eu: size {2 * MIB} bytes, used {3 * MIB} (over quota)" in failed["reason"]
    assert f"provider prov-us: size {8 * MIB} bytes, used {8 * MIB}" in failed["reason"]
    assert failed["started_at"] is None


def _node_reports_files(farm: Farm, work: Path, task_id: int) -> None:
    """The signed report of a landed file: only the node running the attempt, only inside the task's directory;
    where the file is comes from the zone's own choice (prov-eu), not from the node."""
    wk1 = node_client(load_node_config(work.parent / "node.ini"))
    landed = {"attempt": 1, "name": "out/x.txt", "size": 3, "sha256": "0" * 64}
    resp = wk1.post(f"/tasks/{task_id}/files", landed)
    assert resp.status == 200, resp.json()
    assert (resp.json()["provider"], resp.json()["path"]) == ("prov-eu", f"task-{task_id}/out/x.txt")
    assert wk1.post(f"/tasks/{task_id}/files", {**landed, "size": 4}).status == 200  # a retry replaces it
    assert [f["size"] for f in farm.api.get(f"/tasks/{task_id}/files", token=farm.api.root).json()["items"]] == [4]
    assert wk1.post(f"/tasks/{task_id}/files", {**landed, "name": "a/../../x"}).status == 422
    assert wk1.post(f"/tasks/{task_id}/files", {**landed, "name": "/etc/x"}).status == 422
    assert wk1.post(f"/tasks/{task_id}/files", {**landed, "attempt": 2}).status == 403
    other = farm.add_node("wk2", region="eu")  # the same region: the next rounds choose as if on wk1
    wk2 = node_client(load_node_config(other.parent / "node.ini"))
    assert wk2.post(f"/tasks/{task_id}/files", landed).status == 403
    assert farm.api.post(f"/tasks/{task_id}/files", token=farm.api.root, json=landed).status_code == 401


def test_the_upload_step_refuses_past_the_size_or_into_a_marked_space(
        sshd: Sshd, sftp_storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's upload program against the real sshd, before any byte leaves."""
    monkeypatch.setenv("ZONEFARM_SSH_KEY", str(sshd.base / "client_key"))
    monkeypatch.setenv("ZONEFARM_KNOWN_HOSTS", str(sshd.base / "known_hosts"))
    monkeypatch.delenv("ZONEFARM_NODE_CONFIG", raising=False)
    upload = {"sftp_host": "127.0.0.1", "sftp_port": sshd.port, "sftp_user": "root", "space_id": 3,
              "space": "climate", "provider": "prov-eu", "size": 2 * MIB, "used": MIB}
    spec = {"id": 41, "attempt": 1, "upload": upload}
    tdir = tmp_path / "task"
    tdir.mkdir()
    with (tdir / "big.bin").open("wb") as fh:
        fh.truncate(MIB + 1)
    with pytest.raises(pipeline.QuotaRefused, match=f"space climate on provider prov-eu has a size of {2 * MIB} "
                                                    rf"bytes and uses {MIB}: these outputs \({MIB + 1} bytes\)"):
        pipeline.upload_outputs(spec, tdir, [tdir / "big.bin"])
    assert not (sftp_storage / "3").exists()

    (tdir / "small.txt").write_text("x")
    (sftp_storage / "3").mkdir()
    (sftp_storage / "3" / ".over-quota").write_text("{}")
    with pytest.raises(pipeline.QuotaRefused, match="space climate is over quota on provider prov-eu"):
        pipeline.upload_outputs(spec, tdir, [tdir / "small.txt"])
    assert not (sftp_storage / "3" / "task-41").exists()
    (sftp_storage / "3" / ".over-quota").unlink()  # back under: accepted again
    [done] = pipeline.upload_outputs(spec, tdir, [tdir / "small.txt"])
    assert (sftp_storage / "3" / "task-41" / "small.txt").read_text() == "x"
    assert done["sha256"] == hashlib.sha256(b"x").hexdigest()


# The worker side end to end, on SQLite only: the database code it runs (the choice, the file
# records) is tested on both databases above, in process.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_pipeline_lists_its_files_and_fails_over_quota_before_uploading(
        farm: Farm, sshd: Sshd, sftp_storage: Path) -> None:
    """End to end, two tasks in one round: one uploads to the region's provider and lists its
    files; the other's outputs do not fit and it fails before a byte is sent."""
    sid, _, _ = _two_providers(farm, sshd, sftp_storage)
    farm.add_node("wk1", region="eu", ssh_key=str(sshd.base / "client_key"),
                  known_hosts=str(sshd.base / "known_hosts"))
    ok = farm.submit("pipeline", {"generate": [["sh", "-c", "mkdir out; echo data > out/a.txt; echo 2 > b.txt"]],
                                  "outputs": ["out/a.txt", "b.txt"]}, space=sid)
    big = farm.submit("pipeline", {"generate": [["truncate", "-s", "3M", "big.bin"]], "outputs": ["big.bin"]},
                      space=sid, max_attempts=1)
    farm.start_dispatcher("d1")
    done = farm.wait(ok["id"], timeout=90)
    assert done["state"] == "succeeded", farm.log(ok["id"])
    files = farm.api.get(f"/tasks/{ok['id']}/files", token=farm.api.root).json()
    assert files["total"] == 2
    assert [(f["name"], f["size"], f["sha256"], f["provider"], f["space_id"], f["path"]) for f in files["items"]] == [
        ("out/a.txt", 5, hashlib.sha256(b"data\n").hexdigest(), "prov-eu", sid, f"task-{ok['id']}/out/a.txt"),
        ("b.txt", 2, hashlib.sha256(b"2\n").hexdigest(), "prov-eu", sid, f"task-{ok['id']}/b.txt")]
    for f in files["items"]:
        assert (sftp_storage / str(sid) / f["path"]).stat().st_size == f["size"]
    _, stranger = farm.api.user_with_token("mallory")
    assert farm.api.get(f"/tasks/{ok['id']}/files", token=stranger).status_code == 403
    assert farm.api.get(f"/tasks/{ok['id']}/files", token=farm.api.root, params={"limit": 0}).status_code == 422
    # a node's report for a task it does not run is refused (the callbacks' own checks)

    failed = farm.wait(big["id"], timeout=90)
    assert failed["state"] == "failed", failed
    assert f"upload refused over quota: space climate on provider prov-eu has a size of {2 * MIB} bytes and " \
           "uses 0: these outputs (3145728 bytes)" in failed["reason"]
    assert not list(sftp_storage.rglob("big.bin")) and not list(sftp_storage.rglob(".big.bin.part*"))
    assert "upload attempt" not in farm.log(big["id"])  # not retried
    assert farm.api.get(f"/tasks/{big['id']}/files", token=farm.api.root).json()["total"] == 0


class Watcher(threading.Thread):
    """A reader of the space: stats the final names as fast as it can and hashes each the first time
    it appears; anything under a final name that is not the whole file is a violation."""

    def __init__(self, finals: dict[Path, bytes]) -> None:
        super().__init__(daemon=True)
        self.finals = {p: (len(d), hashlib.sha256(d).hexdigest()) for p, d in finals.items()}
        self.stop = threading.Event()
        self.seen: set[Path] = set()
        self.violations: list[str] = []
        self.looks = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for path, (size, digest) in self.finals.items():
                self.looks += 1
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if st.st_size != size:
                    self.violations.append(f"{path.name}: {st.st_size} of {size} bytes under the final name")
                elif path not in self.seen:
                    self.seen.add(path)
                    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                        self.violations.append(f"{path.name}: other bytes under the final name")
            time.sleep(0.0005)  # a partial file under a final name would stay there for a whole upload


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (sshd's per-connection processes), from /proc."""
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        parents[int(status.parent.name)] = int(ppid.split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _mid_file(landing: Path, name: str, size: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the upload has sent some but not all of ``name`` (``size`` bytes), under whatever name it
    writes it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if any(name in p.name and 0 < p.stat().st_size < size for p in landing.iterdir()):
                return
        except FileNotFoundError:
            pass  # not created yet, or renamed while looked at
        assert proc.poll() is None, "the upload ended before it could be cut mid-file"
        time.sleep(0.001)
    raise AssertionError("the upload never started")


def test_an_upload_cut_mid_file_never_shows_a_partial_file_and_the_retry_lands_it(
        sshd: Sshd, sftp_storage: Path, tmp_path: Path) -> None:
    """The upload program itself (the runner's ``after`` step), SIGKILLed half-way through a file, then
    run again; then its SFTP connection killed half-way (sshd's session processes), which its own retry
    survives. A reader watching the final names all along sees nothing or the whole file, never a part."""
    tdir, attempt_dir = tmp_path / "task", tmp_path / "attempt"
    tdir.mkdir()
    attempt_dir.mkdir()
    data = {"big.bin": os.urandom(16 * MIB), "second.bin": os.urandom(16 * MIB)}
    for name, content in data.items():
        (tdir / name).write_bytes(content)
    upload = {"sftp_host": "127.0.0.1", "sftp_port": sshd.port, "sftp_user": "root", "space_id": 5,
              "space": "climate", "provider": "prov-eu", "size": 1 << 40, "used": 0}
    (attempt_dir / "spec.json").write_text(json.dumps({"id": 77, "attempt": 1, "upload": upload,
                                                       "params": {"outputs": list(data)}}))
    env = {**clean_env(), "PYTHONPATH": str(ROOT), "ZONEFARM_ATTEMPT_DIR": str(attempt_dir),
           "ZONEFARM_TASK_DIR": str(tdir), "ZONEFARM_SSH_KEY": str(sshd.base / "client_key"),
           "ZONEFARM_KNOWN_HOSTS": str(sshd.base / "known_hosts")}
    landing = sftp_storage / "5" / "task-77"
    finals = {landing / name: content for name, content in data.items()}
    watcher = Watcher(finals)
    watcher.start()

    def run() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "control.node.tasktypes.pipeline", "upload"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    try:
        # 1. The process dies mid-file (its connection with it): nothing under the final name.
        proc = run()
        _mid_file(landing, "big.bin", len(data["big.bin"]), proc)
        proc.kill()
        proc.wait(10)
        assert not (landing / "big.bin").exists()
        assert 0 < (landing / ".big.bin.part1").stat().st_size < len(data["big.bin"])

        # 2. The rerun (the task's next attempt) lands big.bin; cut its connection during second.bin.
        proc = run()
        _mid_file(landing, "second.bin", len(data["second.bin"]), proc)
        assert (landing / "big.bin").read_bytes() == data["big.bin"]
        sessions = _descendants(sshd.proc.pid)
        assert sessions, "no sshd session process to cut"
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        log = out.decode()
        assert proc.returncode == 0, log
        assert "upload attempt 1/3 failed" in log and "uploaded second.bin" in log
    finally:
        watcher.stop.set()
        watcher.join(10)
    assert watcher.violations == []
    assert watcher.seen == set(finals) and watcher.looks > 100
    for path, content in finals.items():
        assert path.read_bytes() == content
    assert sorted(p.name for p in landing.iterdir()) == ["big.bin", "second.bin"]  # no part left behind
    assert json.loads((attempt_dir / "outputs.json").read_text())["uploaded"][1]["sha256"] == \
        hashlib.sha256(data["second.bin"]).hexdigest()

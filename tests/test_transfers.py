# ruff: noqa: F811  (pytest fixtures imported from tests.test_dispatch are parameters here)
"""Transfers between providers end to end: two real sshd providers (each chrooted to its own
storage), a provider host registered as a node serving the ``transfer`` queue, the real
dispatcher and ansible-runner job, the node's program copying provider to provider over SFTP.
Rights, refusals and the resource on SQLite and PostgreSQL; the end-to-end runs on SQLite."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.node.tasktypes.pipeline import _close_quietly, _connect
from control.node.tasktypes.transfer import Counters, Refused, listing, run
from tests.support.farm import Farm
from tests.support.sshd import Sshd
from tests.test_dispatch import settings, sftp_storage, sshd  # noqa: F401
from tests.test_uploads import _alices_space, _provider, _report, _support

MIB = 1 << 20


@pytest.fixture
def second() -> Iterator[tuple[Path, Path]]:
    """A second provider: its own storage (root-owned path, as sshd's chroot wants) and sshd, which
    authorizes the first sshd's client key too (the node's upload key, as the roles exchange it)."""
    base = Path(tempfile.mkdtemp(prefix="zonefarm-test-sftp2-", dir="/var/lib"))
    base.chmod(0o755)
    storage = base / "storage"
    storage.mkdir(mode=0o755)
    yield base, storage
    shutil.rmtree(base, ignore_errors=True)


def _two(farm: Farm, sshd: Sshd, storage: Path, second: tuple[Path, Path]) -> dict[str, Any]:
    base, storage2 = second
    sshd2 = Sshd(base / "sshd", chroot=storage2, authorized=[(sshd.base / "client_key.pub").read_text().strip()])
    sid, alice = _alices_space(farm)
    p1 = _provider(farm, sshd, storage, "prov1", "eu")
    p2 = _provider(farm, sshd2, storage2, "prov2", "us")
    _support(farm, alice, sid, p1, 64 * MIB)
    _support(farm, alice, sid, p2, 64 * MIB)
    known = farm.tmp / "known_hosts"
    known.write_text((sshd.base / "known_hosts").read_text() + (sshd2.base / "known_hosts").read_text())
    return {"sid": sid, "alice": alice, "p1": p1, "p2": p2, "sshd2": sshd2, "s1": storage, "s2": storage2,
            "known": known}


def _tree(root: Path) -> dict[str, bytes]:
    files = {"out/a.bin": os.urandom(3 * MIB + 17), "out/sub/b.txt": b"bee\n", "out/empty": b""}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _post(farm: Farm, token: str, **body: Any) -> Any:
    return farm.api.post("/transfers", token=token, json=body)


def test_rights_and_refusals(farm: Farm, sshd: Sshd, sftp_storage: Path, second: tuple[Path, Path]) -> None:
    env = _two(farm, sshd, sftp_storage, second)
    try:
        api, sid, alice = farm.api, env["sid"], env["alice"]
        p1, p2 = env["p1"]["provider"]["id"], env["p2"]["provider"]["id"]
        bob, bob_token = api.user_with_token("bob")
        assert api.put(f"/spaces/{sid}/users/{bob['id']}", token=alice, json={"role": "member"}).status_code == 201
        want = {"space": sid, "path": "out", "source": p1, "target": p2, "kind": "replicate"}
        refused = _post(farm, bob_token, **want)
        assert refused.status_code == 403 and "admin" in refused.text  # a member reads, an admin schedules
        _, mallory = api.user_with_token("mallory")
        assert _post(farm, mallory, **want).status_code == 403
        assert _post(farm, alice, **{**want, "path": "../etc"}).status_code == 422
        assert _post(farm, alice, **{**want, "path": "/etc"}).status_code == 422
        assert _post(farm, alice, **{**want, "target": p1}).status_code == 422
        assert _post(farm, alice, **{**want, "target": p2 + 100}).status_code == 422
        twin = _provider(farm, sshd, sftp_storage, "prov1-twin", "eu")  # prov1's storage, registered again
        _support(farm, alice, sid, twin, MIB)
        same = _post(farm, alice, **{**want, "target": twin["provider"]["id"], "kind": "evict"})
        assert same.status_code == 422 and "declare the same storage" in same.text
        _report(farm, env["p2"], sid, 64 * MIB)  # prov2 full: no replicate into it
        full = _post(farm, alice, **want)
        assert full.status_code == 409 and "provider prov2 has no room" in full.text
        evict = _post(farm, alice, **{**want, "kind": "evict"})  # an evict frees room: not refused for it
        assert evict.status_code == 201, evict.text
        shown = evict.json()
        assert (shown["state"], shown["kind"], shown["path"], shown["runs"]) == ("enqueued", "evict", "out", 1)
        assert api.get(f"/transfers/{shown['id']}", token=bob_token).json()["id"] == shown["id"]
        assert api.get(f"/transfers/{shown['id']}", token=mallory).status_code == 403
        assert api.get("/transfers", token=mallory).json()["total"] == 0
        assert api.get("/transfers", token=bob_token).json()["total"] == 1
        assert api.post(f"/transfers/{shown['id']}/cancel", token=bob_token).status_code == 403
        assert api.post(f"/transfers/{shown['id']}/rerun", token=alice).status_code == 409  # not ended
        cancelled = api.post(f"/transfers/{shown['id']}/cancel", token=alice)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert api.post(f"/transfers/{shown['id']}/cancel", token=alice).status_code == 409
        rerun = api.post(f"/transfers/{shown['id']}/rerun", token=alice)
        assert rerun.status_code == 200, rerun.text
        again = rerun.json()
        assert (again["runs"], again["state"], again["bytes_done"]) == (2, "enqueued", 0)
        assert again["task_id"] != shown["task_id"]
        changes = api.get("/changes", token=bob_token).json()["changes"]
        assert [(c["op"], c["data"]["action"]) for c in changes if c["entity"] == "transfer"] == \
            [("create", "create"), ("update", "cancel"), ("update", "rerun")]
        audit = api.get("/audit", token=api.root, params={"entity": "transfer", "entity_id": shown["id"]}).json()
        assert sorted(e["data"]["action"] for e in audit["items"]) == ["cancel", "create", "rerun"]
        [alice_row] = api.get("/users", token=api.root, params={"name": "alice"}).json()["items"]
        assert {e["actor"] for e in audit["items"]} == {f"user:{alice_row['id']}"}
        # the task type is the zone's: not submitted by hand
        api.grant(user=bob["id"])
        own = api.post("/tasks", token=bob_token, json={"name": "transfer", "params": {"transfer": shown["id"]},
                                                        "space": sid})
        assert own.status_code == 422 and "is not submitted" in own.text
    finally:
        env["sshd2"].stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_replicate_migrate_and_an_evict_that_keeps_the_last_replica(
        farm: Farm, sshd: Sshd, sftp_storage: Path, second: tuple[Path, Path]) -> None:
    env = _two(farm, sshd, sftp_storage, second)
    try:
        api, sid, alice = farm.api, env["sid"], env["alice"]
        p1, p2 = env["p1"]["provider"]["id"], env["p2"]["provider"]["id"]
        s1, s2 = env["s1"] / str(sid), env["s2"] / str(sid)
        files = _tree(s1)
        (s1 / "moved" / "deep").mkdir(parents=True)
        (s1 / "moved" / "m.txt").write_bytes(b"em\n")
        (s1 / "moved" / "deep" / "n.bin").write_bytes(os.urandom(70_000))
        (s1 / "kept").mkdir()
        (s1 / "kept" / "k.txt").write_bytes(b"only here\n")
        farm.add_node("prov1-host", region="eu", queues="transfer", ssh_key=str(sshd.base / "client_key"),
                      known_hosts=str(env["known"]))

        def ask(kind: str, path: str) -> int:
            made = _post(farm, alice, space=sid, path=path, source=p1, target=p2, kind=kind)
            assert made.status_code == 201, made.text
            return int(made.json()["id"])

        def finished(transfer_id: int) -> dict[str, Any]:
            task = farm.wait(api.get(f"/transfers/{transfer_id}", token=alice).json()["task_id"], timeout=120)
            shown = dict(api.get(f"/transfers/{transfer_id}", token=alice).json())
            assert shown["state"] == {"succeeded": "completed"}.get(task["state"], task["state"]), farm.log(task["id"])
            return shown

        # One dispatcher round: a replicate, a migrate, and an evict of a path prov2 does not hold.
        asked = {"replicate": ask("replicate", "out"), "migrate": ask("migrate", "moved"),
                 "evict": ask("evict", "kept")}
        farm.start_dispatcher("d1")
        done, moved, refused = (finished(asked[k]) for k in ("replicate", "migrate", "evict"))

        total = sum(len(d) for d in files.values())
        assert done["state"] == "completed"
        assert (done["bytes_total"], done["bytes_done"], done["files_total"], done["files_done"]) == \
            (total, total, 3, 3)
        for name, data in files.items():
            assert hashlib.sha256((s2 / name).read_bytes()).digest() == hashlib.sha256(data).digest()
            assert (s1 / name).exists()
        assert not [p for p in s2.rglob("*") if ".part" in p.name]

        assert moved["state"] == "completed" and moved["files_done"] == 2
        assert (s2 / "moved" / "m.txt").read_bytes() == b"em\n" and (s2 / "moved" / "deep" / "n.bin").is_file()
        assert not (s1 / "moved").exists()  # removed from the source, its emptied directories too

        assert refused["state"] == "failed"
        assert "evict refused: " in refused["reason"] and "the last replica is never removed" in refused["reason"]
        assert (s1 / "kept" / "k.txt").read_bytes() == b"only here\n"

        # Now an evict of "out" from prov1 finds every file on prov2: prov1's copy goes, prov2's stays.
        assert finished(ask("evict", "out"))["state"] == "completed"
        assert not (s1 / "out").exists() and (s2 / "out/a.bin").is_file()
        assert (s1 / "kept" / "k.txt").is_file()
    finally:
        env["sshd2"].stop()


def test_listing_skips_markers_temporaries_and_symlinks(sshd: Sshd, sftp_storage: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the program copies, listed over the real sshd: regular files only."""
    monkeypatch.setenv("ZONEFARM_SSH_KEY", str(sshd.base / "client_key"))
    monkeypatch.setenv("ZONEFARM_KNOWN_HOSTS", str(sshd.base / "known_hosts"))
    (sftp_storage / "7" / "d").mkdir(parents=True)
    (sftp_storage / "7" / "d" / "x").write_text("12")
    (sftp_storage / "7" / ".over-quota").write_text("{}")
    (sftp_storage / "7" / "d" / ".x.part2").write_text("partial")
    os.symlink("/etc/passwd", sftp_storage / "7" / "d" / "link")
    sftp = _connect({"sftp_host": "127.0.0.1", "sftp_port": sshd.port, "sftp_user": "root"})
    try:
        assert listing(sftp, "7") == [("7/d/x", 2)]
        assert listing(sftp, "7/d/x") == [("7/d/x", 2)]
        with pytest.raises(FileNotFoundError):
            listing(sftp, "7/nothing")
        os.symlink("/8", sftp_storage / "7" / "other")  # into another space's directory, inside the chroot
        (sftp_storage / "8" / "secret").mkdir(parents=True)
        (sftp_storage / "8" / "secret" / "s.txt").write_text("space 8's")
        assert listing(sftp, "7/other/secret") == [] and listing(sftp, "7/other") == []
    finally:
        _close_quietly(sftp)


def test_the_program_refuses_a_target_without_room_before_copying(
        sshd: Sshd, sftp_storage: Path, second: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The program itself (as a transfer task runs it), between the two real sshd: the target's size
    against the real bytes, then the target's over-quota marker; nothing is written either time."""
    base, storage2 = second
    sshd2 = Sshd(base / "sshd", chroot=storage2, authorized=[(sshd.base / "client_key.pub").read_text().strip()])
    try:
        known = base / "known_hosts"
        known.write_text((sshd.base / "known_hosts").read_text() + (sshd2.base / "known_hosts").read_text())
        monkeypatch.setenv("ZONEFARM_SSH_KEY", str(sshd.base / "client_key"))
        monkeypatch.setenv("ZONEFARM_KNOWN_HOSTS", str(known))
        monkeypatch.delenv("ZONEFARM_NODE_CONFIG", raising=False)
        (sftp_storage / "3" / "d").mkdir(parents=True)
        (sftp_storage / "3" / "d" / "x.bin").write_bytes(os.urandom(5000))
        (storage2 / "3").mkdir()
        plan = {"transfer": 9, "kind": "replicate", "space_id": 3, "path": "d", "space": "climate",
                "source": {"provider": "prov1", "sftp_host": "127.0.0.1", "sftp_port": sshd.port, "sftp_user": "root"},
                "target": {"provider": "prov2", "sftp_host": "127.0.0.1", "sftp_port": sshd2.port,
                           "sftp_user": "root", "size": 8000, "used": 4000}}
        counters = Counters({"attempt": 1}, 9)
        with pytest.raises(Refused, match="provider prov2 has no room for these 5000 bytes: space climate has a "
                                          "size of 8000 bytes there and uses 4000"):
            run(plan, counters)
        (storage2 / "3" / ".over-quota").write_text("{}")
        with pytest.raises(Refused, match="space climate is over quota on provider prov2"):
            run({**plan, "target": {**plan["target"], "used": 0}}, counters)
        assert sorted(p.name for p in (storage2 / "3").iterdir()) == [".over-quota"]
        (storage2 / "3" / ".over-quota").unlink()
        assert run({**plan, "target": {**plan["target"], "used": 0}}, counters) == {"files": 1, "bytes": 5000}
        assert (storage2 / "3" / "d" / "x.bin").read_bytes() == (sftp_storage / "3" / "d" / "x.bin").read_bytes()
        with pytest.raises(Refused, match="leaves space 3"):
            run({**plan, "path": "../4"}, counters)
        with pytest.raises(Refused, match="the same SFTP server"):
            run({**plan, "kind": "evict", "target": {**plan["source"], "size": 1 << 20, "used": 0}}, counters)
        assert (sftp_storage / "3" / "d" / "x.bin").is_file()
    finally:
        sshd2.stop()

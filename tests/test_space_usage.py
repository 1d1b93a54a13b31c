"""Space usage and quotas: the provider agent measures each space and reports it; the zone
shows it per support, puts it in the change feed and marks a space over quota
(real API on SQLite and PostgreSQL, real directories)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from control.provider.agent import DIR_MODE, FULL_MODE, OVER_QUOTA, load_provider_config, measure
from tests.support.client import Api
from tests.test_provider_agent import follower, register, setup  # noqa: F401 (fixture)

MIB = 1 << 20


def grant(api: Api, s: dict[str, Any], space_id: int, size: int) -> None:
    pid = s["provider"]["id"]
    ticket = api.post(f"/spaces/{space_id}/support_tokens", token=s["user"], json={"provider": pid})
    assert ticket.status_code == 201, ticket.text
    resp = api.post(f"/providers/{pid}/supports", token=s["token"], json={"token": ticket.json()["token"],
                                                                       "size": size})
    assert resp.status_code == 201, resp.text


def sparse(path: Path, size: int) -> None:
    """A file of ``size`` apparent bytes that costs no disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)


def supports(api: Api, token: str, space_id: int) -> dict[int, dict[str, Any]]:
    resp = api.get(f"/spaces/{space_id}/providers", token=token)
    assert resp.status_code == 200, resp.text
    return {s["provider_id"]: s for s in resp.json()["items"]}


def usage_changes(api: Api, token: str, since: int) -> list[dict[str, Any]]:
    resp = api.get("/changes", token=token, params={"since": since})
    assert resp.status_code == 200, resp.text
    return [c for c in resp.json()["changes"] if c["entity"] == "usage"]


def test_agent_reports_usage_shown_per_provider_and_in_the_feed(api: Api, setup: dict[str, Any]) -> None:  # noqa: F811
    climate, _ = setup["spaces"]
    pid = setup["provider"]["id"]
    grant(api, setup, climate, 64 * MIB)
    assert supports(api, setup["user"], climate)[pid]["used"] is None  # not measured yet
    f = follower(setup)
    f.step(timeout=0)
    space = setup["storage"] / str(climate)
    sparse(space / "task-1" / "a.zim", 3 * MIB)
    (space / "task-1" / "b.txt").write_text("12345")
    os.symlink("/etc", space / "escape")  # not followed, not counted
    since = api.get("/changes", token=setup["user"]).json()["last_seq"]

    answer = f.report_usage()
    assert answer == {"updated": 1, "over_quota": [], "ignored": []}
    row = supports(api, setup["user"], climate)[pid]
    assert (row["used"], row["files"], row["size"], row["over_quota"]) == (3 * MIB + 5, 2, 64 * MIB, False)
    assert row["measured_at"]
    for reader in (setup["user"], setup["token"]):  # the space's members and its providers
        [change] = usage_changes(api, reader, since)
        assert change["space_id"] == climate
        assert change["data"]["used"] == 3 * MIB + 5 and change["data"]["provider"] == pid
    _, stranger = api.user_with_token("mallory")
    assert usage_changes(api, stranger, since) == []

    # Unchanged numbers: the measurement time moves, the feed gets nothing.
    assert f.report_usage()["updated"] == 0
    assert len(usage_changes(api, setup["user"], since)) == 1


def test_over_quota_is_marked_and_cleared(api: Api, setup: dict[str, Any]) -> None:  # noqa: F811
    climate, _ = setup["spaces"]
    pid = setup["provider"]["id"]
    grant(api, setup, climate, 2 * MIB)
    f = follower(setup)
    f.step(timeout=0)
    space = setup["storage"] / str(climate)
    sparse(space / "task-1" / "big.zim", 3 * MIB)
    since = api.get("/changes", token=setup["user"]).json()["last_seq"]

    assert f.report_usage()["over_quota"] == [climate]
    assert (space / OVER_QUOTA).is_file()
    assert stat.S_IMODE(space.stat().st_mode) == FULL_MODE  # the SFTP account's group may not write
    assert supports(api, setup["user"], climate)[pid]["over_quota"] is True
    [change] = usage_changes(api, setup["user"], since)
    assert change["data"]["over_quota"] is True and change["data"]["size"] == 2 * MIB

    # The provider grants more: back under at once in the zone, and on disk at the next report.
    resp = api.put(f"/providers/{pid}/spaces/{climate}", token=setup["token"], json={"size": 8 * MIB})
    assert resp.status_code == 200 and resp.json()["over_quota"] is False
    assert usage_changes(api, setup["user"], since)[-1]["data"]["over_quota"] is False
    assert f.report_usage()["over_quota"] == []
    assert not (space / OVER_QUOTA).exists()
    assert stat.S_IMODE(space.stat().st_mode) == DIR_MODE


def test_usage_report_rights_and_bad_input(api: Api, setup: dict[str, Any]) -> None:  # noqa: F811
    climate, ocean = setup["spaces"]
    pid = setup["provider"]["id"]
    grant(api, setup, climate, 4 * MIB)
    other, other_token = register(api, "prov2")
    body = {"spaces": [{"space_id": climate, "used": 1, "files": 1}]}
    assert api.post(f"/providers/{pid}/usage", token=other_token, json=body).status_code == 403
    assert api.post(f"/providers/{pid}/usage", token=setup["user"], json=body).status_code == 403
    # A space this provider does not support (a revocation raced the walk) is ignored, not an error.
    resp = api.post(f"/providers/{pid}/usage", token=setup["token"],
                    json={"spaces": [{"space_id": ocean, "used": 1, "files": 1}]})
    assert resp.status_code == 200 and resp.json()["ignored"] == [ocean]
    assert supports(api, setup["user"], climate)[pid]["used"] is None
    for bad in ({"spaces": [{"space_id": climate, "used": -1, "files": 0}]},
                {"spaces": [{"space_id": climate, "used": "5", "files": 0}]}, {"spaces": {}}, {}):
        resp = api.post(f"/providers/{pid}/usage", token=setup["token"], json=bad)
        assert resp.status_code == 422, (bad, resp.text)


def test_measure_is_bounded(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"d{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 3}" / f"f{i}").write_bytes(b"x" * i)
    full = measure(tmp_path, 1000)
    assert (full.used, full.files, full.complete) == (sum(range(30)), 30, True)
    part = measure(tmp_path, 10)
    assert not part.complete and part.entries == 10 and part.files < 30


def test_usage_settings_come_from_the_config(tmp_path: Path) -> None:
    token = tmp_path / "provider.token"
    token.write_text("t")
    token.chmod(0o600)
    ini = tmp_path / "provider.ini"
    base = f"[provider]\napi_url = http://x\nprovider_id = 1\ntoken_file = {token}\nstorage_path = {tmp_path}\n"
    ini.write_text(base)
    assert (load_provider_config(ini).usage_interval, load_provider_config(ini).usage_max_entries) == (300, 2_000_000)
    ini.write_text(base + "usage_interval = 0\nusage_max_entries = 50\n")
    assert (load_provider_config(ini).usage_interval, load_provider_config(ini).usage_max_entries) == (0, 50)

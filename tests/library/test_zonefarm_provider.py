"""``library/zonefarm_provider.py`` against the real API on loopback (SQLite and PostgreSQL).

Kolla style: the module is loaded from its file and run in-process with ``exit_json`` and
``fail_json`` patched to raise, so each test sees the result the module would print.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.library._kolla import LIBRARY, ModuleFail, load_module
from tests.support.client import Api

MODULE_PATH = LIBRARY / "zonefarm_provider.py"
zonefarm_provider = load_module("zonefarm_provider")


@pytest.fixture
def run(run_module: Any) -> Any:
    def call(args: dict[str, Any], check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
        return run_module(zonefarm_provider, {**args, "_ansible_check_mode": check_mode, "_ansible_diff": diff})
    return call


@pytest.fixture
def fail(run_module: Any) -> Any:
    def call(args: dict[str, Any], check_mode: bool = False) -> str:
        with pytest.raises(ModuleFail) as info:
            run_module(zonefarm_provider, {**args, "_ansible_check_mode": check_mode})
        return str(info.value.result["msg"])
    return call


@pytest.fixture
def args(api: Api, tmp_path: Path) -> dict[str, Any]:
    return {"api_url": api.base, "api_token": api.root, "name": "prov1", "domain": "prov1.example.org",
            "admin_email": "ops@example.org", "sftp_host": "prov1.example.org", "sftp_user": "zfupload",
            "storage_path": "/srv/zonefarm/spaces", "token_path": str(tmp_path / "etc" / "provider.token")}


def providers(api: Api) -> list[dict[str, Any]]:
    resp = api.get("/providers", token=api.root, params={"limit": 100})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def feed_status(api: Api, token: str) -> int:
    return api.get("/changes", token=token, params={"since": 0}).status_code


def test_registers_once_and_keeps_the_token_private(api: Api, args: dict[str, Any], run: Any) -> None:
    first = run(args)
    assert first["changed"] is True
    assert first["provider"]["name"] == "prov1"
    assert first["provider"]["sftp_user"] == "zfupload"
    token_file = Path(args["token_path"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token and token not in repr(first)
    assert feed_status(api, token) == 200

    second = run(args)
    assert second["changed"] is False
    assert second["provider_id"] == first["provider_id"]
    assert [p["name"] for p in providers(api)] == ["prov1"]
    assert token_file.read_text().strip() == token, "a re-run must not replace a working token"


def test_check_mode_registers_nothing(api: Api, args: dict[str, Any], run: Any) -> None:
    result = run(args, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["after"]["name"] == "prov1"
    assert providers(api) == []
    assert not Path(args["token_path"]).exists()


def test_changed_fields_are_patched_and_reported(api: Api, args: dict[str, Any], run: Any) -> None:
    run(args)
    moved = {**args, "storage_path": "/data/spaces", "sftp_port": 2222}
    preview = run(moved, check_mode=True, diff=True)
    assert preview["changed"] is True
    assert preview["diff"]["after"] == {"storage_path": "/data/spaces", "sftp_port": 2222}
    assert providers(api)[0]["storage_path"] == "/srv/zonefarm/spaces", "check mode must not patch"

    result = run(moved)
    assert result["changed"] is True
    shown = providers(api)[0]
    assert (shown["storage_path"], shown["sftp_port"]) == ("/data/spaces", 2222)
    assert run(moved)["changed"] is False


def test_the_support_limit_is_registered_and_kept(api: Api, args: dict[str, Any], run: Any) -> None:
    limited = {**args, "support_limit": 1 << 40}
    assert run(limited)["provider"]["support_limit"] == 1 << 40
    assert run(limited)["changed"] is False
    assert run(args)["changed"] is False  # omitted: left as it is
    raised = run({**args, "support_limit": 1 << 41})
    assert raised["changed"] is True and providers(api)[0]["support_limit"] == 1 << 41


def test_a_lost_token_file_is_rotated(api: Api, args: dict[str, Any], run: Any) -> None:
    run(args)
    token_file = Path(args["token_path"])
    old = token_file.read_text().strip()
    token_file.unlink()
    result = run(args)
    assert result["changed"] is True
    new = token_file.read_text().strip()
    assert new != old
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert feed_status(api, old) == 401
    assert feed_status(api, new) == 200
    assert len(providers(api)) == 1


def test_a_lost_token_fails_when_rotation_is_off(api: Api, args: dict[str, Any], run: Any, fail: Any) -> None:
    run(args)
    Path(args["token_path"]).unlink()
    msg = fail({**args, "rotate_lost_token": False})
    assert "token file" in msg and "rotate_lost_token" in msg


def test_a_loose_token_file_mode_is_tightened(api: Api, args: dict[str, Any], run: Any) -> None:
    run(args)
    token_file = Path(args["token_path"])
    token_file.chmod(0o644)
    assert run(args)["changed"] is True
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_exact_name_match_only(api: Api, args: dict[str, Any], tmp_path: Path, run: Any) -> None:
    run({**args, "name": "prov10", "token_path": str(tmp_path / "other.token")})
    result = run(args)
    assert result["changed"] is True
    assert sorted(p["name"] for p in providers(api)) == ["prov1", "prov10"]


def test_absent_deletes_provider_and_token(api: Api, args: dict[str, Any], run: Any) -> None:
    run(args)
    gone = {**args, "state": "absent"}
    assert run(gone, check_mode=True)["changed"] is True
    assert len(providers(api)) == 1
    assert run(gone)["changed"] is True
    assert providers(api) == []
    assert not Path(args["token_path"]).exists()
    assert run(gone)["changed"] is False


def test_registration_needs_domain_and_email(api: Api, args: dict[str, Any], fail: Any) -> None:
    msg = fail({k: v for k, v in args.items() if k not in ("domain", "admin_email")})
    assert "domain" in msg and "admin_email" in msg
    assert providers(api) == []


def test_schema_error_names_the_field(api: Api, args: dict[str, Any], fail: Any) -> None:
    msg = fail({**args, "admin_email": "not-an-email"})
    assert "422" in msg and "admin_email" in msg


def test_wrong_credential_is_reported(api: Api, args: dict[str, Any], fail: Any) -> None:
    msg = fail({**args, "api_token": "wrong-credential-0123456789"})
    assert "401" in msg
    assert "wrong-credential" not in msg


def test_unreachable_zone_fails_after_bounded_retries(args: dict[str, Any], fail: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    msg = fail({**args, "api_url": f"http://127.0.0.1:{port}", "retries": 2, "retry_delay": 0.05, "timeout": 2})
    assert "cannot reach the zone API" in msg and "2 times" in msg and str(port) in msg


def test_token_path_is_required_when_present(api: Api, args: dict[str, Any], fail: Any) -> None:
    msg = fail({k: v for k, v in args.items() if k != "token_path"})
    assert "token_path" in msg


def test_token_argument_is_no_log() -> None:
    # Ansible masks no_log values in every result and log line; the spec is what enables it.
    import ast
    tree = ast.parse(MODULE_PATH.read_text())
    specs = [n for n in ast.walk(tree) if isinstance(n, ast.Dict)
             and any(isinstance(k, ast.Constant) and k.value == "api_token" for k in n.keys)]
    spec = ast.literal_eval(specs[0])
    assert spec["api_token"]["no_log"] is True


def test_the_region_is_registered_and_kept(api: Api, args: dict[str, Any], run: Any) -> None:
    """Tasks upload to a provider in their worker's region first (docs/data.md)."""
    assert run({**args, "region": "eu"})["provider"]["region"] == "eu"
    assert run({**args, "region": "eu"})["changed"] is False
    assert run(args)["changed"] is False  # omitted: left as it is
    moved = run({**args, "region": "us"})
    assert moved["changed"] is True and providers(api)[0]["region"] == "us"

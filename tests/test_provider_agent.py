"""The provider agent against the real API and its real change feed (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from control.provider.agent import (
    REVOKED,
    Follower,
    ProviderConfig,
    ProviderConfigError,
    TokenRejected,
    load_provider_config,
)
from tests.support.client import Api

ROOT = Path(__file__).resolve().parent.parent


def register(api: Api, name: str = "prov1") -> tuple[dict[str, Any], str]:
    resp = api.post("/providers", token=api.root, json={"name": name, "domain": f"{name}.example.org",
                                                        "admin_email": "ops@example.org"})
    assert resp.status_code == 201, resp.text
    return resp.json()["provider"], resp.json()["token"]


def write_config(tmp_path: Path, api: Api, provider_id: int, token: str, **extra: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file = tmp_path / "provider.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    ini = tmp_path / "provider.ini"
    values = {"api_url": api.base, "provider_id": provider_id, "token_file": token_file,
              "storage_path": tmp_path / "spaces", "state_file": tmp_path / "provider.seq", "poll_timeout": 1,
              **extra}
    ini.write_text("[provider]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    (tmp_path / "spaces").mkdir(exist_ok=True)
    return ini


@pytest.fixture
def setup(api: Api, tmp_path: Path) -> dict[str, Any]:
    provider, token = register(api)
    _, user_token = api.user_with_token("alice")
    spaces = []
    for name in ("climate", "ocean"):
        resp = api.post("/spaces", token=user_token, json={"name": name})
        assert resp.status_code == 201, resp.text
        spaces.append(resp.json()["id"])
    ini = write_config(tmp_path, api, provider["id"], token)
    return {"provider": provider, "token": token, "user": user_token, "spaces": spaces, "ini": ini,
            "storage": tmp_path / "spaces"}


def support(api: Api, s: dict[str, Any], space_id: int) -> None:
    """The space's owner asks for support; the provider consents with its own token."""
    grant(api, s["user"], space_id, s["provider"]["id"], s["token"])


def grant(api: Api, user_token: str, space_id: int, provider_id: int, provider_token: str) -> None:
    ticket = api.post(f"/spaces/{space_id}/support_tokens", token=user_token, json={"provider": provider_id})
    assert ticket.status_code == 201, ticket.text
    resp = api.post(f"/providers/{provider_id}/supports", token=provider_token,
                    json={"token": ticket.json()["token"], "size": 1 << 30})
    assert resp.status_code == 201, resp.text


def revoke(api: Api, s: dict[str, Any], space_id: int) -> None:
    resp = api.delete(f"/spaces/{space_id}/providers/{s['provider']['id']}", token=s["user"])
    assert resp.status_code == 204, resp.text


def follower(s: dict[str, Any]) -> Follower:
    return Follower(load_provider_config(s["ini"]))


def test_supported_spaces_get_directories_and_unsupported_do_not(api: Api, setup: dict[str, Any]) -> None:
    climate, ocean = setup["spaces"]
    support(api, setup, climate)
    f = follower(setup)
    f.step(timeout=0)
    assert (setup["storage"] / str(climate)).is_dir()
    assert not (setup["storage"] / str(ocean)).exists()
    mode = stat.S_IMODE((setup["storage"] / str(climate)).stat().st_mode)
    assert mode == 0o2770


def test_revocation_marks_and_never_deletes(api: Api, setup: dict[str, Any]) -> None:
    climate, _ = setup["spaces"]
    support(api, setup, climate)
    f = follower(setup)
    f.step(timeout=0)
    data = setup["storage"] / str(climate) / "results.nc"
    data.write_text("precious")
    revoke(api, setup, climate)
    f.step(timeout=0)
    marker = setup["storage"] / str(climate) / REVOKED
    assert marker.is_file()
    assert json.loads(marker.read_text())["reason"] == "support revoked"
    assert data.read_text() == "precious"

    support(api, setup, climate)  # supported again: the marker goes, the data stays
    f.step(timeout=0)
    assert not marker.exists()
    assert data.read_text() == "precious"


def test_deleting_the_space_marks_it_revoked(api: Api, setup: dict[str, Any]) -> None:
    climate, _ = setup["spaces"]
    support(api, setup, climate)
    f = follower(setup)
    f.step(timeout=0)
    assert api.delete(f"/spaces/{climate}", token=setup["user"]).status_code == 204
    f.step(timeout=0)
    assert (setup["storage"] / str(climate) / REVOKED).is_file()


def test_resumes_from_the_saved_sequence(api: Api, setup: dict[str, Any]) -> None:
    climate, ocean = setup["spaces"]
    support(api, setup, climate)
    first = follower(setup)
    first.step(timeout=0)
    saved = json.loads(Path(first.config.state_file).read_text())["seq"]
    assert saved == first.seq > 0

    # A change made while the agent is down is applied by the next agent, which starts at `saved`.
    (setup["storage"] / str(climate)).rmdir()  # would come back only on a replay from 0
    support(api, setup, ocean)
    second = follower(setup)
    assert second.seq == saved
    assert second.step(timeout=0) >= 1
    assert (setup["storage"] / str(ocean)).is_dir()
    assert not (setup["storage"] / str(climate)).exists(), "resumed agent replayed old changes"


def test_long_poll_wakes_on_a_new_support(api: Api, setup: dict[str, Any]) -> None:
    climate, _ = setup["spaces"]
    f = follower(setup)
    f.step(timeout=0)
    applied: list[int] = []
    thread = threading.Thread(target=lambda: applied.append(f.step(timeout=8)))
    thread.start()
    support(api, setup, climate)
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert applied and applied[0] >= 1
    assert (setup["storage"] / str(climate)).is_dir()


def test_another_providers_support_is_ignored(api: Api, setup: dict[str, Any]) -> None:
    climate, _ = setup["spaces"]
    support(api, setup, climate)
    other, other_token = register(api, "prov2")
    grant(api, setup["user"], climate, other["id"], other_token)
    f = follower(setup)
    f.step(timeout=0)
    resp = api.delete(f"/spaces/{climate}/providers/{other['id']}", token=setup["user"])
    assert resp.status_code == 204
    f.step(timeout=0)
    assert (setup["storage"] / str(climate)).is_dir()
    assert not (setup["storage"] / str(climate) / REVOKED).exists()


def test_a_rejected_token_is_reported(api: Api, setup: dict[str, Any]) -> None:
    f = follower(setup)
    resp = api.post(f"/providers/{setup['provider']['id']}/token", token=api.root)
    assert resp.status_code == 200
    with pytest.raises(TokenRejected, match="401"):
        f.step(timeout=0)


def test_run_stops_on_request_and_backs_off_on_errors(api: Api, setup: dict[str, Any], tmp_path: Path) -> None:
    ini = write_config(tmp_path / "down", api, setup["provider"]["id"], setup["token"],
                       api_url="http://127.0.0.1:9", request_timeout=1)
    f = Follower(load_provider_config(ini))
    stop = threading.Event()
    thread = threading.Thread(target=f.run, args=(stop,))
    thread.start()
    thread.join(timeout=1.5)
    assert thread.is_alive(), "an unreachable zone must not end the agent"
    stop.set()
    thread.join(timeout=5)  # the back-off sleep is interruptible
    assert not thread.is_alive()
    assert f.seq == 0


def test_cli_once_applies_and_prints_the_sequence(api: Api, setup: dict[str, Any]) -> None:
    climate, _ = setup["spaces"]
    support(api, setup, climate)
    proc = subprocess.run([sys.executable, "-m", "control", "provider", "agent", "--config", str(setup["ini"]),
                           "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["applied"] >= 1 and out["seq"] > 0
    assert (setup["storage"] / str(climate)).is_dir()
    assert setup["token"] not in proc.stdout + proc.stderr


def _cli_support(ini: Path, ticket: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "control", "provider", "support", "--config", str(ini), *extra],
                          cwd=ROOT, input=ticket + "\n", capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_support_is_the_providers_consent(api: Api, setup: dict[str, Any]) -> None:
    """On the provider's host: the support token a space admin handed over, on stdin, redeemed
    with the provider's own token; the agent then keeps the space's directory."""
    climate, ocean = setup["spaces"]
    pid = setup["provider"]["id"]
    ticket = api.post(f"/spaces/{climate}/support_tokens", token=setup["user"], json={"provider": pid, "size": 1 << 30})
    assert ticket.status_code == 201, ticket.text
    proc = _cli_support(setup["ini"], ticket.json()["token"], "--size", str(1 << 29))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["size"] == 1 << 29 and json.loads(proc.stdout)["space_id"] == climate
    assert ticket.json()["token"] not in proc.stdout + proc.stderr
    again = _cli_support(setup["ini"], ticket.json()["token"])
    assert again.returncode != 0 and "410" in again.stderr and "already redeemed" in again.stderr
    other, _ = register(api, "prov2")
    elsewhere = api.post(f"/spaces/{ocean}/support_tokens", token=setup["user"], json={"provider": other["id"]})
    refused = _cli_support(setup["ini"], elsewhere.json()["token"], "--size", str(1 << 20))
    assert refused.returncode != 0 and f"for provider {other['id']}" in refused.stderr
    assert _cli_support(setup["ini"], "").returncode != 0
    follower(setup).step(timeout=0)
    assert (setup["storage"] / str(climate)).is_dir() and not (setup["storage"] / str(ocean)).exists()


def test_config_refuses_a_readable_token_file(tmp_path: Path) -> None:
    token = tmp_path / "provider.token"
    token.write_text("secret-token-value")
    token.chmod(0o644)
    ini = tmp_path / "provider.ini"
    ini.write_text(f"[provider]\napi_url = http://x\nprovider_id = 1\ntoken_file = {token}\n"
                   f"storage_path = {tmp_path}\n")
    with pytest.raises(ProviderConfigError, match="chmod 600"):
        load_provider_config(ini)
    token.chmod(0o600)
    config = load_provider_config(ini)
    assert isinstance(config, ProviderConfig)
    assert "secret-token-value" not in repr(config)
    assert config.state_file == str(tmp_path / "provider.seq")


@pytest.mark.parametrize("body, message", [
    ("[other]\n", "missing [provider]"),
    ("[provider]\napi_url = http://x\n", "provider_id is required"),
    ("[provider]\napi_url = http://x\nprovider_id = 1\ntoken_file = /t\nstorage_path = rel\n", "absolute"),
    ("[provider]\napi_url = http://x\nprovider_id = 1\ntoken_file = /t\nstorage_path = /s\nbogus = 1\n",
     "unknown key"),
])
def test_config_errors_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    ini = tmp_path / "provider.ini"
    ini.write_text(body)
    with pytest.raises(ProviderConfigError, match=message.replace("[", r"\[")):
        load_provider_config(ini)

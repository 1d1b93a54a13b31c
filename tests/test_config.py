"""Settings: defaults < INI file < environment, with clear errors for bad values."""

from __future__ import annotations

import pytest

from control.core.config import ConfigError, Settings, load_settings, settings_table

GOOD = "s" * 16


def test_defaults() -> None:
    s = load_settings(env={})
    assert s.listen == "127.0.0.1:8700" and s.host == "127.0.0.1" and s.port == 8700
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("zonefarm.db")


def test_ini_then_environment_precedence(tmp_path) -> None:
    ini = tmp_path / "z.ini"
    ini.write_text("[zonefarm]\nlisten = 0.0.0.0:9000\ntoken_ttl = 60\nroot_secret = from-file-0123456789\n")
    s = load_settings(ini, env={"ZONEFARM_TOKEN_TTL": "120"})
    assert s.listen == "0.0.0.0:9000" and s.token_ttl == 120 and s.root_secret == "from-file-0123456789"


@pytest.mark.parametrize("content,needle", [
    ("[zonefarm]\nno_such = 1\n", "unknown setting 'no_such'"),
    ("[zonefarm]\ntoken_ttl = soon\n", "token_ttl must be an integer"),
    ("[zonefarm]\nlisten = 8700\n", "listen must be host:port"),
    ("not an ini file", "File contains no section headers"),
])
def test_bad_ini_is_a_clear_error(tmp_path, content: str, needle: str) -> None:
    ini = tmp_path / "z.ini"
    ini.write_text(content)
    with pytest.raises(ConfigError) as exc:
        load_settings(ini, env={})
    assert needle in str(exc.value)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.ini", env={})


@pytest.mark.parametrize("root,nodes,needle", [
    ("", GOOD, "ZONEFARM_ROOT_SECRET is not set"),
    ("short", GOOD, "ZONEFARM_ROOT_SECRET is shorter than 16"),
    (GOOD, "", "ZONEFARM_NODES_SECRET is not set"),
    (GOOD, "x" * 15, "ZONEFARM_NODES_SECRET is shorter than 16"),
])
def test_weak_or_missing_secrets_refused(root: str, nodes: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings(root_secret=root, nodes_secret=nodes).require_secrets()


def test_unknown_placement_refused() -> None:
    with pytest.raises(ConfigError, match="dispatch_placement must be pack or spread, got 'random'"):
        load_settings(env={"ZONEFARM_DISPATCH_PLACEMENT": "random"})
    assert load_settings(env={"ZONEFARM_DISPATCH_PLACEMENT": "spread"}).dispatch_placement == "spread"


def test_public_masks_secrets() -> None:
    shown = Settings(root_secret=GOOD, nodes_secret=GOOD).public()
    assert GOOD not in str(shown) and shown["root_secret"] == "********"


def test_readme_lists_every_setting() -> None:
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for row in settings_table().splitlines()[2:]:
        name = row.split("|")[2].strip()
        assert name in readme, f"README's configuration table lacks {name}"

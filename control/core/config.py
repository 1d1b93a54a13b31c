"""Settings come from one place so the API, the dispatcher and the CLI agree.

Precedence: built-in default < INI file (``--config``, section ``[zonefarm]``) <
environment variable ``ZONEFARM_<NAME>``. Every setting is listed in ``SETTINGS``;
the README's configuration table is generated from it (``zonefarm config-doc``).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MIN_SECRET_LENGTH = 16
PLACEMENTS = ("pack", "spread")  # dispatch_placement: see control.farm.claims


class ConfigError(SystemExit):
    """Raised for configuration a service must not start with; exits with the message."""

    def __init__(self, message: str) -> None:
        super().__init__(f"zonefarm: configuration error: {message}")


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "zonefarm")


def opt(default: Any = None, doc: str = "", *, factory: Any = None, secret: bool = False) -> Any:
    meta = {"doc": doc, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    database: str = opt(
        "",
        "Database URL: `sqlite:///PATH` or `postgresql://USER:PASS@HOST:PORT/DB`. Empty means SQLite in the data dir.")
    root_secret: str = opt(
        "",
        "Admin credential (Bearer). At least 16 characters. Required by `api`.", secret=True)
    nodes_secret: str = opt(
        "",
        "Secret each node's own key is derived from (HMAC-SHA256, see docs/security.md); it stays on the zone "
        "and the Ansible controller. At least 16 characters. Required by `api`.", secret=True)
    listen: str = opt(
        "127.0.0.1:8700",
        "host:port the API binds.")
    data_dir: str = opt(
        None, "Where the SQLite database, dispatcher jobs and artifacts live.",
        factory=_default_data_dir)
    api_workers: int = opt(
        2,
        "gunicorn worker processes.")
    api_threads: int = opt(
        16,
        "Threads per worker (long-polls hold one each).")
    token_ttl: int = opt(
        3600,
        "Lifetime of user access tokens, seconds.")
    invite_max_ttl: int = opt(
        30 * 86400,
        "Longest lifetime of an invite or support token, seconds. They last 7 days unless the issuer "
        "asks otherwise (or this is shorter).")
    db_pool_size: int = opt(
        16,
        "Pooled connections per process (PostgreSQL and SQLite).")
    changes_max_wait: int = opt(
        60,
        "Longest long-poll `GET /changes` may hold, seconds.")
    node_lease: int = opt(
        60,
        "A node silent for longer is marked lost, seconds.")
    task_lease: int = opt(
        60,
        "A running task whose runner is silent for longer is lost, seconds.")
    task_log_max: int = opt(
        10_000_000,
        "Most characters of output stored per task; past it the log ends with one truncation line and the "
        "rest is dropped (the task still runs and finishes normally).")
    task_memory_mb_default: int = opt(
        2048,
        "Memory (MiB) a task gets when its `limits` name none; the task is killed and fails above it.")
    task_memory_mb_max: int = opt(
        16384,
        "Most memory (MiB) a task may ask for in `limits.memory_mb`; more is refused (422).")
    task_cpus_default: float = opt(
        1.0,
        "CPUs a task gets when its `limits` name none (1.5 = one and a half).")
    task_cpus_max: float = opt(
        8.0,
        "Most CPUs a task may ask for in `limits.cpus`; more is refused (422).")
    task_processes_default: int = opt(
        512,
        "Processes (and threads) a task may run at once when its `limits` name none.")
    task_processes_max: int = opt(
        4096,
        "Most processes a task may ask for in `limits.processes`; more is refused (422).")
    callback_skew: int = opt(
        300,
        "Largest allowed clock difference on signed node requests, seconds.")
    node_key_grace: int = opt(
        86400,
        "After a node's key is rotated, how long its previous key still signs (runners started before), seconds.")
    api_url: str = opt(
        "",
        "URL nodes call back to. Empty means http://<listen>.")
    dispatch_interval: float = opt(
        0.5,
        "Seconds between dispatcher rounds when idle.")
    dispatch_forks: int = opt(
        50,
        "Ansible forks per dispatch job.")
    dispatch_placement: str = opt(
        "pack",
        "Where claimed tasks go: `pack` fills a node to its concurrency before the next (fewest hosts per "
        "Ansible round), `spread` picks the node with the most free slots.")
    artifacts_keep: int = opt(
        20,
        "Finished job directories the dispatcher keeps; older ones are deleted.")
    log_level: str = opt(
        "INFO",
        "Python log level.")

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{Path(self.data_dir) / 'zonefarm.db'}"

    @property
    def callback_url(self) -> str:
        return self.api_url or f"http://{self.listen}"

    def require_secrets(self) -> None:
        """Refuse to serve with a missing or weak secret: a short one can be guessed."""
        for name in ("root_secret", "nodes_secret"):
            value = getattr(self, name)
            env = f"ZONEFARM_{name.upper()}"
            if not value:
                raise ConfigError(f"{env} is not set; it must be at least {MIN_SECRET_LENGTH} characters")
            if len(value) < MIN_SECRET_LENGTH:
                raise ConfigError(f"{env} is shorter than {MIN_SECRET_LENGTH} characters")

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked, for printing."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "********" if f.metadata.get("secret") and value else value
        return out


def _coerce(name: str, kind: Any, raw: str, source: str) -> Any:
    if kind in (int, "int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{source}: {name} must be an integer, got {raw!r}") from None
    if kind in (float, "float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{source}: {name} must be a number, got {raw!r}") from None
    return raw


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings)}
    config_file = config_file or env.get("ZONEFARM_CONFIG") or None
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if parser.has_section("zonefarm"):
            for key, raw in parser.items("zonefarm"):
                if key not in known:
                    raise ConfigError(f"{path}: unknown setting {key!r}")
                values[key] = _coerce(key, known[key].type, raw, str(path))
    for name, f in known.items():
        raw = env.get(f"ZONEFARM_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, f.type, raw, f"ZONEFARM_{name.upper()}")
    if values.get("dispatch_placement", "pack") not in PLACEMENTS:
        raise ConfigError(f"dispatch_placement must be {' or '.join(PLACEMENTS)}, got {values['dispatch_placement']!r}")
    for name in ("task_log_max", "task_memory_mb_default", "task_memory_mb_max", "task_cpus_default",
                 "task_cpus_max", "task_processes_default", "task_processes_max"):
        if name in values and not values[name] > 0:
            raise ConfigError(f"{name} must be more than 0, got {values[name]}")
    for kind in ("memory_mb", "cpus", "processes"):
        default = values.get(f"task_{kind}_default", getattr(Settings, f"task_{kind}_default", None))
        top = values.get(f"task_{kind}_max", getattr(Settings, f"task_{kind}_max", None))
        if default is not None and top is not None and default > top:
            raise ConfigError(f"task_{kind}_default ({default}) is above task_{kind}_max ({top})")
    if "listen" in values and ":" not in values["listen"]:
        raise ConfigError(f"listen must be host:port, got {values['listen']!r}")
    return Settings(**values)


def settings_table() -> str:
    """Markdown table of every setting, for the README."""
    rows = ["| setting | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default if f.default_factory is field().default_factory else "~/.local/share/zonefarm"  # type: ignore[misc]
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{f.name}` | `ZONEFARM_{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)

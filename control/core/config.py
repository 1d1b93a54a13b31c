"""Settings come from one place so the API, the dispatcher and the CLI agree.

Precedence: built-in default < INI file (``--config``, section ``[zonefarm]``) <
environment variable ``ZONEFARM_<NAME>``. Every setting is listed in ``SETTINGS``;
the README's configuration table is generated from it (``zonefarm config-doc``).
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from control.core.egress import parse_allow

MIN_SECRET_LENGTH = 16
PLACEMENTS = ("pack", "spread")  # dispatch_placement: see control.farm.claims
REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a node's region, as the API takes it


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
    tls_cert: str = opt(
        "",
        "PEM certificate (with its chain) the API serves HTTPS with. Empty means plain HTTP, which the API "
        "refuses on a `listen` address other than loopback unless `allow_plain_http` is set.")
    tls_key: str = opt(
        "",
        "PEM private key of `tls_cert` (keep it 0600). Set both or neither.")
    allow_plain_http: bool = opt(
        False,
        "Serve plain HTTP on a non-loopback `listen` address (e.g. behind a TLS-terminating proxy on the "
        "same network). Off: the API refuses to start that way, since tokens and secrets would cross the "
        "network in clear.")
    ca_file: str = opt(
        "",
        "CA certificate(s) clients run with this config verify the API against (the deployment roles "
        "install the site CA as `/etc/zonefarm/ca.pem`). Empty means the system's CAs.")
    data_dir: str = opt(
        None, "Where the SQLite database, dispatcher jobs and artifacts live.",
        factory=_default_data_dir)
    api_workers: int = opt(
        2,
        "gunicorn worker processes.")
    api_threads: int = opt(
        16,
        "Threads per worker (a waiting long-poll holds one; see `changes_max_polls`).")
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
    changes_max_polls: int = opt(
        8,
        "Long-polls one API process holds at once, and never more than half of `api_threads`: the other "
        "threads stay free for health checks, node callbacks and ordinary requests. A poll past it is "
        "answered 429 with Retry-After.")
    changes_max_polls_per_principal: int = opt(
        2,
        "Long-polls one caller (a user, a provider or root, whatever its tokens) holds at once per API "
        "process; more are answered 429 with Retry-After.")
    refresh_token_ttl: int = opt(
        30 * 86400,
        "Lifetime of refresh tokens, seconds. Each is good for one `grant_type=refresh_token` exchange.")
    login_max_failures: int = opt(
        10,
        "Failed logins one username may have within `login_window`; past it `POST /auth/token` answers "
        "429 with Retry-After, even to the right password, until enough failures have left the window.")
    login_max_failures_per_address: int = opt(
        50,
        "Failed logins one client address (the TCP peer, not X-Forwarded-For) may have within "
        "`login_window`, whatever the usernames.")
    login_window: int = opt(
        900,
        "Seconds a failed login counts against its username and address.")
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
    task_resources_default: str = opt(
        "",
        "Resources a task reserves on its node when its `resources` leave them out, e.g. "
        "`cpu=1, memory=2GiB, disk=10GiB` (memory and disk in bytes, or with KiB/MiB/GiB/TiB; any named "
        "resource a node reports, such as `gpu=1`). Empty: a task reserves only what it asks for, and one "
        "asking for nothing is placed by concurrency alone. See docs/placement.md.")
    placement_reserve_after: float = opt(
        600.0,
        "Seconds a queued task that asks for `resources` may wait for room before it holds the next node "
        "that can fit it: no other task starts there until it does, so a stream of small tasks cannot "
        "starve a big one. 0 turns holding off.")
    callback_skew: int = opt(
        300,
        "Largest allowed clock difference on signed node requests, seconds.")
    node_key_grace: int = opt(
        86400,
        "After a node's key is rotated, how long its previous key still signs (runners started before), seconds.")
    api_url: str = opt(
        "",
        "URL nodes call back to. Empty means https://<listen> with `tls_cert`, else http://<listen>.")
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
    dispatch_regions: str = opt(
        "",
        "Regions this dispatcher claims tasks for, separated by commas or spaces (`eu-west, eu-north`), so "
        "one dispatcher per region can share a large site. Its nodes are then left to it (and to any other "
        "dispatcher listing the same region); regions no running dispatcher lists are served by every "
        "dispatcher. Empty: every region not assigned to another dispatcher. See docs/placement.md.")
    dispatch_region_lease: float = opt(
        30.0,
        "Seconds a dispatcher's hold on its `dispatch_regions` lasts without being renewed (it renews it "
        "every quarter of this, whatever its rounds are doing): after a dispatcher dies, its regions are "
        "served by the others once this has passed.")
    dispatch_known_hosts: str = opt(
        "",
        "known_hosts file the dispatcher checks the workers' SSH host keys against (the cluster_manager "
        "role writes it from keys read on the workers). Empty means the account's `~/.ssh/known_hosts`. "
        "Checking is always on: a node whose key does not match is cordoned and its tasks go back to the queue.")
    storage_ssh_key: str = opt(
        "",
        "Private key the API reads provider storage with over SFTP, to stream a task's landed outputs "
        "(`GET /tasks/{id}/files/{name}`); the provider's upload account must authorize it. Empty means the "
        "API account's default keys (`~/.ssh/id_*`).")
    storage_known_hosts: str = opt(
        "",
        "known_hosts file the API checks provider storage hosts' SSH keys against when it streams a file. "
        "Empty means the account's and the system's known_hosts. An unknown host key is always refused.")
    container_images: str = opt(
        "",
        "Images a `container` task may run: exact names or globs (`*`, `?`, `[...]`), separated by commas or "
        "spaces, matched against the image exactly as submitted (`busybox:*` allows every busybox tag). "
        "Empty means no image is allowed.")
    user_max_queued: int = opt(
        1000,
        "Tasks one user may have waiting (queued or lost; a broadcast counts one per node). A submission over "
        "it gets 429 with Retry-After. 0 means no limit; root has none.")
    user_max_running: int = opt(
        100,
        "Tasks one user may have assigned or running when submitting more: over it, new submissions get 429 "
        "with Retry-After until some finish. 0 means no limit; root has none.")
    user_limit_retry_after: int = opt(
        30,
        "Seconds the 429 of a user over `user_max_queued` or `user_max_running` asks to wait (Retry-After).")
    artifacts_keep: int = opt(
        20,
        "Finished job directories the dispatcher keeps; older ones are deleted.")
    log_level: str = opt(
        "INFO",
        "Python log level.")
    metrics_token: str = opt(
        "",
        "Bearer token `GET /metrics` requires (Prometheus' `authorization` credentials). Empty means "
        "the endpoint is off (404). See docs/metrics.md.", secret=True)
    retention_tasks_days: float = opt(
        30.0,
        "Finished tasks, with their events and logs, are deleted this many days after they finished.")
    retention_logs_days: float = opt(
        30.0,
        "Logs of finished tasks are deleted this many days after the task finished (at most "
        "`retention_tasks_days`).")
    retention_feed_days: float = opt(
        90.0,
        "Change-feed entries older than this many days are deleted (never the newest); a provider "
        "resuming from before them gets 410 and resynchronises from 0.")
    retention_tokens_days: float = opt(
        7.0,
        "Expired tokens, node join tokens, invites and support tokens are deleted this many days after they expired.")
    prune_interval: float = opt(
        3600.0,
        "Seconds between two runs of the pruner (one dispatcher at a time runs it).")
    # --- webhooks (docs/webhooks.md) ---
    webhook_allow: str = opt(
        "",
        "Where webhooks may deliver besides public addresses: CIDRs (`10.2.0.0/16`, `127.0.0.0/8` for "
        "tests) and host names (`hooks.example.org`, `*.corp.example`), separated by commas or spaces. "
        "Empty: public addresses only; loopback, private, link-local and other internal addresses are "
        "refused, checked on the address a delivery actually connects to.")
    webhook_timeout: float = opt(
        10.0,
        "Seconds a webhook receiver has to connect and to answer each read; a slower one fails the attempt.")
    webhook_max_attempts: int = opt(
        6,
        "Attempts per webhook delivery before it is marked failed.")
    webhook_backoff: float = opt(
        30.0,
        "Seconds before the first retry of a failed webhook delivery; each further retry waits twice as "
        "long, up to `webhook_backoff_max`.")
    webhook_backoff_max: float = opt(
        3600.0,
        "Longest wait between two attempts of a webhook delivery, seconds.")
    webhook_ca_file: str = opt(
        "",
        "CA certificate(s) (PEM) https webhook receivers are verified against, for receivers with a "
        "certificate from a private CA. Empty means the CA bundle of `requests` (certifi).")
    webhook_poll_interval: float = opt(
        1.0,
        "Seconds the webhook sender of each API process waits between looks for due deliveries.")
    webhook_senders: int = opt(
        4,
        "Deliveries one API process sends at once (threads): a slow receiver holds one of them only.")

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
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def container_image_patterns(self) -> tuple[str, ...]:
        """``container_images`` as a tuple of names and globs."""
        return tuple(p for p in self.container_images.replace(",", " ").split() if p)

    @property
    def dispatch_region_names(self) -> tuple[str, ...]:
        """``dispatch_regions`` as a tuple of region names (checked when the settings load)."""
        return tuple(dict.fromkeys(r for r in self.dispatch_regions.replace(",", " ").split() if r))

    @property
    def resources_default(self) -> dict[str, float]:
        """``task_resources_default`` as resource -> amount (checked when the settings load)."""
        return parse_resources(self.task_resources_default)

    @property
    def callback_url(self) -> str:
        return self.api_url or f"{'https' if self.tls else 'http'}://{self.listen}"

    def require_transport(self) -> None:
        """Refuse to serve tokens and node secrets in clear text over a network.

        Plain HTTP is fine on loopback (the local deployment, tests); anywhere else it needs
        a certificate, or the explicit ``allow_plain_http`` override.
        """
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be set together (ZONEFARM_TLS_CERT, ZONEFARM_TLS_KEY)")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{name} {path} is not a readable file")
        if not self.tls and not self.allow_plain_http and not is_loopback(self.host):
            raise ConfigError(
                f"listen {self.listen} is not a loopback address and no TLS certificate is set: set tls_cert "
                "and tls_key (ZONEFARM_TLS_CERT, ZONEFARM_TLS_KEY), listen on 127.0.0.1, or set "
                "allow_plain_http = true if something else encrypts the traffic")

    @property
    def long_poll_slots(self) -> int:
        """Long-polls one process may hold: ``changes_max_polls``, but at most half the threads,
        so a flood of polls can never take the threads health checks and callbacks need."""
        return max(0, min(self.changes_max_polls, self.api_threads // 2))

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


_BYTE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
RESOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
RESOURCE_MAX = float(2**63 - 1)


def parse_resources(raw: str) -> dict[str, float]:
    """``cpu=1, memory=2GiB`` as ``{"cpu": 1, "memory": 2147483648}``; ValueError naming the bad item."""
    out: dict[str, float] = {}
    for item in raw.replace(",", " ").split():
        name, sep, value = item.partition("=")
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", value.strip())
        unit = match.group(2).lower() if match else ""
        if not sep or not RESOURCE_NAME.match(name) or match is None or unit not in _BYTE_UNITS:
            raise ValueError(f"{item!r} is not name=amount (e.g. cpu=0.5, memory=2GiB)")
        amount = float(match.group(1)) * _BYTE_UNITS[unit]
        if amount > RESOURCE_MAX:
            raise ValueError(f"{item!r} is too large")
        out[name] = int(amount) if name in ("memory", "disk") or amount.is_integer() else amount
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` (the host part of ``listen``) is reachable from this machine only.

    A name other than ``localhost`` counts as public: it may resolve to any interface.
    """
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce(name: str, kind: Any, raw: str, source: str) -> Any:
    if kind in (bool, "bool"):
        try:
            return _BOOLS[raw.strip().lower()]
        except KeyError:
            raise ConfigError(f"{source}: {name} must be true or false, got {raw!r}") from None
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


_AT_LEAST_ONE = ("changes_max_polls_per_principal", "refresh_token_ttl", "login_max_failures",
                 "login_max_failures_per_address", "login_window", "webhook_max_attempts", "webhook_senders")


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
    for name in _AT_LEAST_ONE:
        if name in values and values[name] < 1:
            raise ConfigError(f"{name} must be at least 1, got {values[name]}")
    if values.get("changes_max_polls", 0) < 0:
        raise ConfigError(f"changes_max_polls must not be negative, got {values['changes_max_polls']}")
    for name in ("user_max_queued", "user_max_running", "user_limit_retry_after"):
        if values.get(name, 0) < 0:
            raise ConfigError(f"{name} must be 0 or more, got {values[name]}")
    for name in ("task_log_max", "task_memory_mb_default", "task_memory_mb_max", "task_cpus_default",
                 "task_cpus_max", "task_processes_default", "task_processes_max"):
        if name in values and not values[name] > 0:
            raise ConfigError(f"{name} must be more than 0, got {values[name]}")
    for kind in ("memory_mb", "cpus", "processes"):
        default = values.get(f"task_{kind}_default", getattr(Settings, f"task_{kind}_default", None))
        top = values.get(f"task_{kind}_max", getattr(Settings, f"task_{kind}_max", None))
        if default is not None and top is not None and default > top:
            raise ConfigError(f"task_{kind}_default ({default}) is above task_{kind}_max ({top})")
    try:
        parse_resources(values.get("task_resources_default", ""))
    except ValueError as exc:
        raise ConfigError(f"task_resources_default: {exc}") from None
    for region in values.get("dispatch_regions", "").replace(",", " ").split():
        if not REGION.fullmatch(region):
            raise ConfigError(f"dispatch_regions: {region!r} is not a region name (letters, digits, '.', '_' "
                              "and '-', at most 100)")
    if not values.get("dispatch_region_lease", 30.0) > 0:
        raise ConfigError(f"dispatch_region_lease must be more than 0, got {values['dispatch_region_lease']}")
    if values.get("placement_reserve_after", 0) < 0:
        raise ConfigError(f"placement_reserve_after must be 0 or more, got {values['placement_reserve_after']}")
    for name in ("webhook_timeout", "webhook_backoff", "webhook_backoff_max", "webhook_poll_interval"):
        if name in values and not values[name] > 0:
            raise ConfigError(f"{name} must be more than 0, got {values[name]}")
    if "webhook_allow" in values:
        try:  # one parser for the setting, here and at send time
            parse_allow(values["webhook_allow"])
        except ValueError as exc:
            raise ConfigError(f"webhook_allow: {exc}") from None
    if "listen" in values and ":" not in values["listen"]:
        raise ConfigError(f"listen must be host:port, got {values['listen']!r}")
    return Settings(**values)


def settings_table() -> str:
    """Markdown table of every setting, for the README."""
    rows = ["| setting | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default if f.default_factory is field().default_factory else "~/.local/share/zonefarm"  # type: ignore[misc]
        if isinstance(default, bool):
            default = str(default).lower()  # as the INI file spells it
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{f.name}` | `ZONEFARM_{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)

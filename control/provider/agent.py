"""The provider agent: follows the zone's change feed and keeps one directory per supported space.

It long-polls ``GET /api/v1/changes?since=SEQ`` with the provider token and saves the last
number it applied, so a restarted agent resumes where it stopped and misses nothing. The
feed is the source of truth; replaying it from 0 rebuilds the same directories.

Every ``usage_interval`` seconds it measures each supported space's directory (bytes and
regular files, :func:`measure`) and reports them all in one request
(``POST /providers/{id}/usage``). A space the zone then says is over its size gets an
``.over-quota`` marker and loses group write on its directory (the SFTP upload account is in
the group: no new task directory can be made there) until a later report finds it back
under. This is enforcement by the agent, for storage that cannot hold a hard limit itself
(overlay, FUSE, NFS-Ganesha); the upload step checks the marker and the zone's numbers before
it starts (``control.node.tasktypes.pipeline``).

A support the zone revokes (or a deleted space) gets a ``.revoked`` marker in its directory
and nothing else: research data is never deleted by a registry edit. A later support of the
same space removes the marker.

The INI file (section ``[provider]``) names the token *file*, never the token, and the
agent refuses a token file others can read (``control.node.secretfile``). Its HTTP goes
through the worker side's one API client (``control.node.client``) with bearer auth.

``zonefarm provider support`` is the provider's consent to support a space: it redeems a
support token a space admin handed over (read from stdin, so it never shows in ``ps``)
with the provider's own token and the size it grants.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.node.client import ApiClient, Bearer, Response, TransportError
from control.node.secretfile import private_file, read_section

SECTION = "provider"
REVOKED = ".revoked"
OVER_QUOTA = ".over-quota"
DIR_MODE = 0o2770  # setgid: uploads by the SFTP account (same group) stay in the group
FULL_MODE = 0o2750  # over quota: the group (the SFTP account) may read but not write
log = logging.getLogger("zonefarm.provider")


class ProviderConfigError(ValueError):
    pass


class TokenRejected(RuntimeError):
    """The zone answered 401/403: retrying with the same token cannot help."""


class FeedError(RuntimeError):
    """The change feed answered something other than 200: retried with back-off."""


@dataclass(frozen=True)
class ProviderConfig:
    path: str
    api_url: str
    provider_id: int
    token_file: str
    storage_path: str
    state_file: str
    name: str = ""
    poll_timeout: int = 30
    request_timeout: float = 10.0
    # CA file the zone's certificate is checked against (https api_url); empty means the system's CAs.
    ca_file: str = ""
    # Seconds between usage measurements (0: never measure); each walk of a space stops after
    # usage_max_entries directory entries and reports what it counted (a lower bound).
    usage_interval: int = 300
    usage_max_entries: int = 2_000_000
    token: str = field(default="", repr=False)

    @property
    def changes_url(self) -> str:
        return self.api_url + "/api/v1/changes"

    def client(self) -> ApiClient:
        """The worker side's API client, authenticated with this provider's token."""
        return ApiClient(self.api_url, Bearer(self.token), self.request_timeout, ca_file=self.ca_file)


def _read_token(path: Path) -> str:
    private_file(path, "the provider token", ProviderConfigError)
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ProviderConfigError(f"{path}: empty token file")
    return token


def load_provider_config(path: str | os.PathLike[str]) -> ProviderConfig:
    p = Path(path).resolve()
    sec = read_section(p, SECTION, ProviderConfigError)
    for key in ("api_url", "provider_id", "token_file", "storage_path"):
        if not sec.get(key, "").strip():
            raise ProviderConfigError(f"{p}: [{SECTION}] {key} is required")
    known = {f for f in ProviderConfig.__dataclass_fields__ if f not in ("path", "token")}
    unknown = set(sec) - known
    if unknown:
        raise ProviderConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    storage = sec["storage_path"].strip()
    if not os.path.isabs(storage):
        raise ProviderConfigError(f"{p}: [{SECTION}] storage_path must be absolute")
    base = sec["api_url"].strip().rstrip("/")
    base = base[: -len("/api/v1")] if base.endswith("/api/v1") else base
    token_file = Path(sec["token_file"].strip())
    try:
        return ProviderConfig(
            path=str(p), api_url=base, provider_id=sec.getint("provider_id"), token_file=str(token_file),
            storage_path=storage, name=sec.get("name", "").strip(),
            state_file=sec.get("state_file", "").strip() or str(token_file.parent / "provider.seq"),
            poll_timeout=sec.getint("poll_timeout", 30), request_timeout=sec.getfloat("request_timeout", 10.0),
            ca_file=sec.get("ca_file", "").strip(),
            usage_interval=sec.getint("usage_interval", 300),
            usage_max_entries=sec.getint("usage_max_entries", 2_000_000),
            token=_read_token(token_file))
    except ValueError as exc:
        if isinstance(exc, ProviderConfigError):
            raise
        raise ProviderConfigError(f"{p}: {exc}") from None


@dataclass(frozen=True)
class Usage:
    used: int
    files: int
    entries: int
    complete: bool


def measure(root: Path, max_entries: int) -> Usage:
    """Bytes and regular files under ``root``: one ``os.scandir`` walk, no symlink followed.

    The sizes come from the directory entries' ``lstat`` (apparent size, what a user's
    upload adds), one system call per entry and no file opened. The walk is bounded: past
    ``max_entries`` entries it stops and reports what it counted, marked incomplete, so a
    huge tree costs a bounded time per interval and is reported as at least that much.
    """
    used = files = entries = 0
    stack = [root]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue  # vanished or unreadable meanwhile: the next pass counts it
        with it:
            for entry in it:
                entries += 1
                if entries > max_entries:
                    return Usage(used, files, entries - 1, False)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        used += entry.stat(follow_symlinks=False).st_size
                        files += 1
                except OSError:
                    continue
    return Usage(used, files, entries, True)


class Follower:
    """Applies the feed to the storage directory; one instance per agent process."""

    def __init__(self, config: ProviderConfig, client: ApiClient | None = None) -> None:
        self.config = config
        self.client = client or config.client()
        self.storage = Path(config.storage_path)
        self.state_file = Path(config.state_file)
        self.seq = self._load_seq()

    def _load_seq(self) -> int:
        try:
            return int(json.loads(self.state_file.read_text())["seq"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            # A corrupt state file only costs a replay: the feed is idempotent to apply.
            log.warning("state file %s unreadable (%s); replaying the feed from 0", self.state_file, exc)
            return 0

    def _save_seq(self) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps({"seq": self.seq, "saved_at": time.time()}))
        os.replace(tmp, self.state_file)

    def space_dir(self, space_id: int) -> Path:
        return self.storage / str(space_id)

    # --- effects -------------------------------------------------------------------------

    def support(self, space_id: int, change: dict[str, Any]) -> None:
        path = self.space_dir(space_id)
        if not path.is_dir():
            path.mkdir(mode=DIR_MODE)
            os.chmod(path, DIR_MODE)  # mkdir's mode is cut by the umask
            log.info("space %s supported: created %s", space_id, path)
        marker = path / REVOKED
        if marker.exists():
            marker.unlink()
            log.info("space %s supported again (change %s): removed %s", space_id, change["seq"], marker)

    def revoke(self, space_id: int, change: dict[str, Any], reason: str) -> None:
        path = self.space_dir(space_id)
        if not path.is_dir():
            return
        marker = path / REVOKED
        if not marker.exists():
            marker.write_text(json.dumps({"seq": change["seq"], "ts": change.get("ts"), "reason": reason}) + "\n")
            log.warning("space %s %s (change %s): marked %s; its data is kept", space_id, reason, change["seq"], path)

    def apply(self, change: dict[str, Any]) -> None:
        """Support changes are the ones naming this provider and a space, whatever the entity is called."""
        space_id = change.get("space_id")
        mine = change.get("provider_id") == self.config.provider_id
        if mine and space_id is not None and change.get("entity") != "provider":
            if change["op"] == "delete":
                self.revoke(space_id, change, "support revoked")
            else:
                self.support(space_id, change)
        elif change.get("entity") == "space" and change["op"] == "delete" and space_id is not None:
            self.revoke(space_id, change, "space deleted")
        elif change.get("entity") == "provider" and change.get("entity_id") == self.config.provider_id \
                and change["op"] == "delete":
            log.error("this provider was deleted from the zone (change %s)", change["seq"])

    # --- usage ---------------------------------------------------------------------------

    def supported_dirs(self) -> dict[int, Path]:
        """The space directories this agent keeps and has not marked revoked."""
        out = {}
        try:
            entries = list(os.scandir(self.storage))
        except FileNotFoundError:
            return {}
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False) \
                    and not os.path.exists(os.path.join(entry.path, REVOKED)):
                out[int(entry.name)] = Path(entry.path)
        return out

    def report_usage(self) -> dict[str, Any]:
        """Measure every supported space, report them in one request, mark those over quota."""
        dirs = self.supported_dirs()
        measured = {sid: measure(path, self.config.usage_max_entries) for sid, path in sorted(dirs.items())}
        for sid, u in measured.items():
            if not u.complete:
                log.warning("space %s: walk stopped after %s entries; reported %s bytes is a lower bound",
                            sid, u.entries, u.used)
        body = {"spaces": [{"space_id": sid, "used": u.used, "files": u.files} for sid, u in measured.items()]}
        resp = self.client.post(f"/providers/{self.config.provider_id}/usage", body)
        if resp.status in (401, 403):
            raise TokenRejected(f"the zone refused the usage report ({resp.status}): {_error_message(resp)}")
        if resp.status != 200:
            raise FeedError(f"POST /usage answered {resp.status}: {_error_message(resp)}")
        answer = dict(resp.json())
        over = set(answer.get("over_quota", []))
        for sid, path in dirs.items():
            self.mark_quota(sid, path, sid in over, measured[sid])
        return answer

    def mark_quota(self, space_id: int, path: Path, over: bool, u: Usage) -> None:
        """Over quota: a marker and no group write; back under: both undone."""
        marker = path / OVER_QUOTA
        if over:
            if not marker.exists():
                marker.write_text(json.dumps({"used": u.used, "files": u.files, "ts": time.time()}) + "\n")
                log.warning("space %s is over quota (%s bytes): uploads refused until it is back under",
                            space_id, u.used)
            os.chmod(path, FULL_MODE)
        elif marker.exists():
            os.chmod(path, DIR_MODE)
            marker.unlink()
            log.info("space %s is back under quota (%s bytes): uploads accepted again", space_id, u.used)

    # --- the feed ------------------------------------------------------------------------

    def step(self, timeout: int | None = None) -> int:
        """One long-poll; returns how many changes were applied."""
        wait = self.config.poll_timeout if timeout is None else timeout
        resp = self.client.get("/changes", query={"since": self.seq, "timeout": wait},
                               timeout=wait + self.config.request_timeout)
        if resp.status in (401, 403):
            raise TokenRejected(f"the zone refused the provider token ({resp.status}): "
                                f"{_error_message(resp)}")
        if resp.status == 410:
            # The zone pruned changes we have not seen (retention_feed_days): replay what it
            # keeps from the start; applying the feed is idempotent.
            log.warning("the zone no longer keeps the changes after %s (%s); resynchronising from 0",
                        self.seq, _error_message(resp))
            self.seq = 0
            self._save_seq()
            return 0
        if resp.status != 200:
            raise FeedError(f"GET /changes answered {resp.status}: {_error_message(resp)}")
        body = resp.json()
        changes = body.get("changes", [])
        for change in changes:
            if change["seq"] > self.seq:
                self.apply(change)
        last = max([body.get("last_seq", self.seq), self.seq, *(c["seq"] for c in changes)])
        if last != self.seq or not self.state_file.exists():
            self.seq = last
            self._save_seq()
        return len(changes)

    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set; transport errors back off up to 30 s, never crash the agent."""
        self.storage.mkdir(parents=True, exist_ok=True)
        delay = 1.0
        next_usage = time.monotonic()
        while not stop.is_set():
            try:
                if self.config.usage_interval > 0 and time.monotonic() >= next_usage:
                    next_usage = time.monotonic() + self.config.usage_interval
                    self.report_usage()
                self.step()
                delay = 1.0
            except TokenRejected as exc:
                log.error("%s", exc)
                stop.wait(30.0)
            except (TransportError, FeedError, ValueError) as exc:
                log.warning("change feed unavailable (%s); retrying in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)


def _error_message(resp: Response) -> str:
    return resp.error_message()


def redeem_support(config: ProviderConfig, ticket: str, size: int | None) -> dict[str, Any]:
    """Support the space a support token names: ``POST /providers/{id}/supports`` with the
    provider's token. Returns the support; a refusal raises with the zone's message."""
    body: dict[str, Any] = {"token": ticket} | ({"size": size} if size is not None else {})
    with config.client() as client:
        resp = client.post(f"/providers/{config.provider_id}/supports", body)
    if resp.status != 201:
        raise RuntimeError(f"the zone refused the support token ({resp.status}): {_error_message(resp)}")
    return dict(resp.json())


def cmd_support(args: argparse.Namespace) -> int:
    try:
        config = load_provider_config(args.provider_config)
    except ProviderConfigError as exc:
        raise SystemExit(f"zonefarm provider: {exc}") from None
    ticket = sys.stdin.readline().strip()
    if not ticket:
        raise SystemExit("zonefarm provider support: give the support token on stdin")
    try:
        support = redeem_support(config, ticket, args.size)
    except (RuntimeError, TransportError) as exc:
        raise SystemExit(f"zonefarm provider support: {exc}") from None
    print(json.dumps(support))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("ZONEFARM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_provider_config(args.provider_config)
    except ProviderConfigError as exc:
        raise SystemExit(f"zonefarm provider: {exc}") from None
    follower = Follower(config)
    if args.once:
        try:
            count = follower.step(timeout=0)
            usage = follower.report_usage() if config.usage_interval > 0 else None
        except TokenRejected as exc:
            raise SystemExit(f"zonefarm provider: {exc}") from None
        print(json.dumps({"applied": count, "seq": follower.seq, "usage": usage}))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("following %s from change %s into %s", config.changes_url, follower.seq, config.storage_path)
    follower.run(stop)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    provider = sub.add_parser("provider", help="provider side").add_subparsers(dest="provider_command",
                                                                               required=True)
    p = provider.add_parser("agent", aliases=["follow"],
                            help="follow the change feed and keep the space directories")
    p.add_argument("--config", dest="provider_config", required=True, help="INI file with a [provider] section")
    p.add_argument("--once", action="store_true", help="apply what the feed holds now, then exit")
    p.set_defaults(func=cmd_agent)
    sp = provider.add_parser("support", help="consent to support a space: redeem the support token given on stdin")
    sp.add_argument("--config", dest="provider_config", required=True, help="INI file with a [provider] section")
    sp.add_argument("--size", type=int, help="bytes granted (default: what the token asks for)")
    sp.set_defaults(func=cmd_support)

"""Worker side: ``zonefarm node register|heartbeat|agent`` with signed requests.

A worker's timer (or the ``agent`` loop) keeps the node online. Every request goes through
the worker's API client (``control.node.client``), signed with the key read from the node's
0600 INI file, so the key is never on a command line or in the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from control.node.client import Anonymous, ApiClient, TransportError, node_client
from control.node.config import NodeConfig, NodeConfigError, load_node_config, read_node_values, write_node_config
from control.node.secretfile import InsecureFileError, require_private

log = logging.getLogger("zonefarm.node")


class AgentError(RuntimeError):
    pass


def resources(workdir: str) -> dict[str, int]:
    """What the node offers, as Zimfarm workers report it: cpu count, memory and disk bytes."""
    memory = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    path = workdir if os.path.isdir(workdir) else "/"
    return {"cpu": os.cpu_count() or 1, "memory": memory, "disk": shutil.disk_usage(path).free}


def signed_post(config: NodeConfig, route: str, body: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
    """One signed POST through the worker's API client; AgentError says why it did not land."""
    with node_client(config, timeout) as client:
        try:
            resp = client.post(route, body)
        except TransportError as exc:
            raise AgentError(str(exc)) from None
    if resp.status >= 300:
        raise AgentError(f"{route}: HTTP {resp.status}: {resp.text[:300]}")
    try:
        return resp.json()
    except ValueError:
        return {}


def register(config: NodeConfig) -> dict[str, Any]:
    os.makedirs(config.workdir, mode=0o700, exist_ok=True)
    body = config.registration(os.getpid(), socket.gethostname(), resources(config.workdir))
    return signed_post(config, "/nodes/register", body)


def enroll(config_path: str, token: str, timeout: float = 30) -> dict[str, Any]:
    """Enroll this node with a join token and write the key it answers into the node's INI file.

    For a node the Ansible controller did not derive a key for: the administrator issues
    a single-use token for its name (``POST /nodes/tokens``), and the node trades it once
    for its own key. The file is rewritten 0600 with ``node_key`` and ``key_generation``.
    """
    config = load_node_config(config_path, require_key=False)
    os.makedirs(config.workdir, mode=0o700, exist_ok=True)
    body = {"token": token,
            "registration": config.registration(os.getpid(), socket.gethostname(), resources(config.workdir))}
    with ApiClient(config.api_url, Anonymous(), timeout, ca_file=config.ca_file) as client:
        try:
            resp = client.post("/nodes/enroll", body)
        except TransportError as exc:
            raise AgentError(str(exc)) from None
    if resp.status != 201:
        raise AgentError(f"/nodes/enroll: HTTP {resp.status}: {resp.error_message()}")
    answer = resp.json()
    credential = answer["credential"]
    values = read_node_values(config.path)
    values.update(node_key=credential["node_key"], key_generation=credential["key_generation"])
    write_node_config(config.path, **values)
    return answer["node"]


def read_join_token(path: str) -> str:
    """The join token from its file (never argv: a command line is visible to every user)."""
    try:
        require_private(path, "the join token")
        with open(path) as fh:
            token = fh.read().strip()
    except (OSError, InsecureFileError) as exc:
        raise AgentError(f"join token file: {exc}") from None
    if not token:
        raise AgentError(f"{path}: empty join token file")
    return token


def heartbeat(config: NodeConfig) -> dict[str, Any]:
    return signed_post(config, f"/nodes/{config.name}/heartbeat", {"pid": os.getpid()})


def prune_task_dirs(workdir: str, keep_seconds: float, now: float | None = None) -> list[str]:
    """Delete task attempt directories the runner finished with more than ``keep_seconds`` ago.

    Only attempts with a ``done`` marker go: a running or never-started one is left alone.
    Keeps a worker's disk bounded the way ``artifacts_keep`` bounds the dispatcher's.
    """
    cutoff = (time.time() if now is None else now) - keep_seconds
    removed = []
    root = Path(workdir) / "tasks"
    for done in root.glob("*/*/done"):
        try:
            finished = float(done.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if finished < cutoff:
            shutil.rmtree(done.parent, ignore_errors=True)
            removed.append(str(done.parent))
            try:
                done.parent.parent.rmdir()  # the task's directory, once its last attempt is gone
            except OSError:
                pass
    return removed


def prune_sandbox_dirs(config: NodeConfig, keep_seconds: float, now: float | None = None) -> list[str]:
    """Delete task directories left in the sandbox's tree (a runner that died before taking them back).

    Only what is this agent's: ``<sandbox root>/tasks/<our uid>/``, entries handed back to us
    (a directory the sandbox has not handed back yet is still the task account's, and stays
    until whoever takes that account next hands it back) and older than ``keep_seconds``.
    """
    from control.node.sandbox import SandboxError, load_policy

    try:
        root = Path(load_policy(config.sandbox_policy).root) / "tasks" / str(os.geteuid())
    except SandboxError:
        return []
    cutoff = (time.time() if now is None else now) - keep_seconds
    removed = []
    for entry in root.glob("*") if root.is_dir() else []:
        try:
            st = entry.lstat()
        except OSError:
            continue
        if entry.is_dir() and not entry.is_symlink() and st.st_uid == os.geteuid() and st.st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


def agent(config: NodeConfig, stop: threading.Event, interval: float) -> None:
    """Register, then heartbeat; re-register when the API no longer knows the node."""
    registered = False
    next_prune = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_prune:
            keep = config.task_dirs_keep_days * 86400
            pruned = prune_task_dirs(config.workdir, keep) + prune_sandbox_dirs(config, keep)
            if pruned:
                log.info("pruned %d finished task directories", len(pruned))
            next_prune = time.monotonic() + 3600
        try:
            if not registered:
                register(config)
                registered = True
                log.info("registered node %s with %s", config.name, config.api_url)
            else:
                heartbeat(config)
        except AgentError as exc:
            log.warning("%s", exc)
            if "HTTP 404" in str(exc):
                registered = False
        stop.wait(interval)


def _config(args: argparse.Namespace) -> NodeConfig:
    try:
        return load_node_config(args.node_config)
    except NodeConfigError as exc:
        raise SystemExit(f"zonefarm: {exc}") from None


def cmd_node(args: argparse.Namespace) -> int:
    if args.node_command == "enroll":
        try:
            print(json.dumps(enroll(args.node_config, read_join_token(args.join_token_file))))
        except NodeConfigError as exc:
            raise SystemExit(f"zonefarm: {exc}") from None
        except AgentError as exc:
            print(f"zonefarm node enroll: {exc}", file=sys.stderr)
            return 1
        return 0
    config = _config(args)
    try:
        if args.node_command == "register":
            print(json.dumps(register(config)))
        elif args.node_command == "heartbeat":
            print(json.dumps(heartbeat(config)))
        else:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            interval = args.interval or config.heartbeat_interval or 15.0
            agent(config, threading.Event(), interval)
    except AgentError as exc:
        print(f"zonefarm node {args.node_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("node", help="worker side: register this node and keep it online")
    sub = p.add_subparsers(dest="node_command", required=True)
    for name, text in (("register", "register (or re-register) this node"),
                       ("heartbeat", "send one signed heartbeat"),
                       ("agent", "register, then heartbeat until stopped"),
                       ("enroll", "trade a join token for this node's key, written to its INI file")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--node-config", "--config", dest="node_config", required=True,
                       help="the node's INI file ([node] section, mode 0600)")
        if name == "agent":
            q.add_argument("--interval", type=float, help="seconds between heartbeats")
        if name == "enroll":
            q.add_argument("--join-token-file", required=True,
                           help="file (0600) holding the join token from POST /api/v1/nodes/tokens")
        q.set_defaults(func=cmd_node)

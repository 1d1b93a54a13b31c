"""The worker-side INI file (section ``[node]``): who this node is and its own key.

Standard library only, because the task runner reads it on its hot path. The file
holds the node's key (``node_key``, of generation ``key_generation``: derived from the
nodes secret by the Ansible controller, or handed out once by ``zonefarm node enroll``),
so it must be private to its owner (mode 0600 or stricter): the agent and the runner
refuse a group- or world-readable file rather than use a key others may have read.
The nodes secret itself never belongs on a node: a file that holds it is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from control.node.secretfile import read_section

SECTION = "node"


class NodeConfigError(ValueError):
    pass


@dataclass(frozen=True)
class NodeConfig:
    path: str
    api_url: str
    name: str
    node_key: str = field(repr=False)
    key_generation: int = 0
    region: str = "default"
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 1
    workdir: str = ""
    ansible_host: str = "127.0.0.1"
    ansible_port: int = 22
    ansible_user: str = "root"
    ansible_connection: str = "ssh"
    python: str = "/usr/bin/python3"
    labels: dict[str, str] = field(default_factory=dict)
    # Resources the node reports over what it detects (cpu count, memory and free disk bytes):
    # named ones such as gpu, or less than the machine has (the rest kept for its own services).
    resources: dict[str, float] = field(default_factory=dict)
    heartbeat_interval: float = 0.0
    # The private key pipeline uploads authenticate with; empty means paramiko's defaults.
    ssh_key: str = ""
    # known_hosts for provider storage hosts; empty means the user's and system's.
    known_hosts: str = ""
    # CA file the zone's certificate is checked against (https api_url); empty means the system's CAs.
    ca_file: str = ""
    # Finished task attempt directories older than this are deleted by the agent.
    task_dirs_keep_days: float = 7.0
    # Niceness (0-19) of the runner and its tasks: batch work yields the CPU to the node's
    # own services, and to the control plane on a host that carries both.
    task_nice: int = 10
    # The task sandbox (control.node.sandbox): its root-owned policy file ([sandbox]; empty: the
    # built-in defaults, only when the runner is root), and the program sudo lets a runner that is
    # not root start (the sudoers rule names exactly it and the policy path).
    sandbox_policy: str = ""
    sandbox_command: str = ""
    # Images container tasks may run here (names or globs): the node refuses others even if the
    # zone let them through (the zone's container_images is the first check).
    container_images: tuple[str, ...] = ()

    def registration(self, pid: int, hostname: str, resources: dict[str, int]) -> dict[str, object]:
        """The body of ``POST /nodes/register``: everything but the key."""
        return {
            "name": self.name, "region": self.region, "hostname": hostname, "pid": pid,
            "queues": list(self.queues), "concurrency": self.concurrency,
            "ansible_host": self.ansible_host, "ansible_port": self.ansible_port,
            "ansible_user": self.ansible_user, "ansible_connection": self.ansible_connection,
            "python": self.python, "workdir": self.workdir, "config_path": self.path,
            "resources": {**resources, **self.resources}, "labels": dict(self.labels),
        }


def _split(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.replace("\n", ",").split(",") if p.strip())


def _resources(raw: str) -> dict[str, float]:
    """``gpu=2, memory=8589934592``: name=amount items, amounts plain numbers (bytes for memory and disk)."""
    out: dict[str, float] = {}
    for item in _split(raw):
        key, _, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            raise ValueError(f"resources: {item!r} is not name=number") from None
        if not key.strip() or not 0 <= amount < 2**62:
            raise ValueError(f"resources: {item!r} is not name=number")
        out[key.strip()] = int(amount) if amount.is_integer() else amount
    return out


def _nice(value: int) -> int:
    if not 0 <= value <= 19:
        raise ValueError(f"task_nice must be between 0 and 19, got {value}")
    return value


def _generation(value: int) -> int:
    if value < 0:
        raise ValueError(f"key_generation must be 0 or more, got {value}")
    return value


def load_node_config(path: str | os.PathLike[str], *, require_key: bool = True) -> NodeConfig:
    """Read and check a node's INI file; ``require_key=False`` only for enrolling (it has none yet)."""
    p = Path(path).resolve()
    sec = read_section(p, SECTION, NodeConfigError, what="the node key")
    if "nodes_secret" in sec:
        raise NodeConfigError(f"{p}: [{SECTION}] nodes_secret does not belong on a node; write its own "
                              "node_key instead (the worker role derives it, or use zonefarm node enroll)")
    for key in ("api_url", "name", "node_key") if require_key else ("api_url", "name"):
        if not sec.get(key, "").strip():
            raise NodeConfigError(f"{p}: [{SECTION}] {key} is required")
    known = {f for f in NodeConfig.__dataclass_fields__ if f != "path"}
    unknown = set(sec) - known
    if unknown:
        raise NodeConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    labels = {}
    for item in _split(sec.get("labels", "")):
        key, _, value = item.partition("=")
        labels[key.strip()] = value.strip()
    try:
        return NodeConfig(
            path=str(p), api_url=sec["api_url"].rstrip("/"), name=sec["name"].strip(),
            node_key=sec.get("node_key", "").strip(), key_generation=_generation(sec.getint("key_generation", 0)),
            region=sec.get("region", "default"),
            queues=_split(sec.get("queues", "default")) or ("default",),
            concurrency=sec.getint("concurrency", 1),
            workdir=sec.get("workdir", "") or str(p.parent / "work"),
            ansible_host=sec.get("ansible_host", "127.0.0.1"),
            ansible_port=sec.getint("ansible_port", 22),
            ansible_user=sec.get("ansible_user", "root"),
            ansible_connection=sec.get("ansible_connection", "ssh"),
            python=sec.get("python", "/usr/bin/python3"),
            labels=labels, resources=_resources(sec.get("resources", "")),
            heartbeat_interval=sec.getfloat("heartbeat_interval", 0.0),
            ssh_key=sec.get("ssh_key", "").strip(), known_hosts=sec.get("known_hosts", "").strip(),
            ca_file=sec.get("ca_file", "").strip(),
            task_dirs_keep_days=sec.getfloat("task_dirs_keep_days", 7.0),
            task_nice=_nice(sec.getint("task_nice", 10)),
            sandbox_policy=sec.get("sandbox_policy", "").strip(),
            sandbox_command=sec.get("sandbox_command", "").strip(),
            container_images=tuple(p for p in sec.get("container_images", "").replace(",", " ").split() if p))
    except ValueError as exc:
        raise NodeConfigError(f"{p}: {exc}") from None


def write_node_config(path: str | os.PathLike[str], **values: object) -> Path:
    """Write a ``[node]`` file created 0600 from the start (never readable by others).

    Written to a temporary file and renamed over, so a reader never sees half a file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"[{SECTION}]"]
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"{key} = {value}")
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return p


def read_node_values(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``[node]`` section as written, for rewriting it with a key (``zonefarm node enroll``)."""
    return dict(read_section(path, SECTION, NodeConfigError))

"""A node's Ansible host variables: how Ansible reaches a node is decided once, here.

The dispatcher's jobs and ``GET /inventory`` used to build their own and disagreed on
the interpreter. The dispatcher's is what runs tasks, so its rules win: a registered
interpreter is used as is, and a node without one gets ``auto_silent`` (what the
dispatcher's jobs already fell back to through ``ANSIBLE_INTERPRETER_PYTHON``: discovery
without a warning per host). A port or user left empty is left out rather than sent as
an empty value, so the connection's own default (SSH config, current user) applies.

:func:`connection` is what both use. :func:`hostvars` adds what the node serves, for
``GET /inventory`` only: label values and resource names are free text a node sends,
and a dispatch job's inventory carries only values held to strict patterns
(``control.farm.schemas``), so nothing a node says is ever templated by the job.

Never a secret here: the node's key stays in its own INI file, and where that file
lives (``config_path``) is only added to a dispatch job's inventory.
"""

from __future__ import annotations

import re
from typing import Any

from control.farm.models import Node

DEFAULT_INTERPRETER = "auto_silent"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def connection(node: Node) -> dict[str, Any]:
    """How Ansible reaches ``node``: the same for a dispatch job and ``GET /inventory``."""
    hv: dict[str, Any] = {
        "ansible_host": node.ansible_host or "127.0.0.1",
        "ansible_connection": node.ansible_connection or "ssh",
        "ansible_python_interpreter": node.python or DEFAULT_INTERPRETER,
    }
    if node.ansible_port:
        hv["ansible_port"] = node.ansible_port
    if node.ansible_user:
        hv["ansible_user"] = node.ansible_user
    return hv


def hostvars(node: Node) -> dict[str, Any]:
    """How Ansible reaches ``node`` and what the node serves (``GET /inventory``)."""
    return {
        **connection(node),
        "zonefarm_region": node.region,
        "zonefarm_queues": list(node.queues or []),
        "zonefarm_concurrency": node.concurrency,
        "zonefarm_labels": dict(node.labels or {}),
        "zonefarm_resources": dict(node.resources or {}),
        "zonefarm_workdir": node.workdir,
        "zonefarm_state": node.state,
        "zonefarm_cordoned": node.cordoned,
    }


def group_name(prefix: str, value: str) -> str:
    """An Ansible group name for a queue or region: ``[A-Za-z0-9_]`` only."""
    return f"{prefix}_{_UNSAFE.sub('_', value)}"


def dynamic_inventory(nodes: list[Node]) -> dict[str, Any]:
    """The nodes as ``ansible-inventory --list`` JSON: groups per queue, region and state."""
    groups: dict[str, list[str]] = {}
    meta: dict[str, Any] = {}
    for node in nodes:
        meta[node.name] = hostvars(node)
        names = [group_name("region", node.region), f"zonefarm_{node.state}"]
        names += [group_name("queue", q) for q in node.queues or []]
        if node.cordoned:
            names.append("zonefarm_cordoned")
        for g in names:
            groups.setdefault(g, []).append(node.name)
    out: dict[str, Any] = {"_meta": {"hostvars": meta},
                           "all": {"children": sorted(groups) + ["ungrouped"], "hosts": []}}
    for g in sorted(groups):
        out[g] = {"hosts": sorted(set(groups[g]))}
    return out

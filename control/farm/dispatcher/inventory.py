"""What one dispatch round hands Ansible: the job's inventory and the plays it imports.

A round's job covers every node that has something to do: the tasks claimed for it
(hostvar ``zonefarm_batch``, group ``zonefarm_type_<name>``) and the kills the reaper
handed out (hostvar ``zonefarm_kills``, group ``zonefarm_kill``). A host's variables are
the farm's one :func:`control.farm.hostvars.hostvars` plus what only a job needs: where
the node's INI file is (the runner reads the nodes secret from it; the secret itself is
never in the inventory) and the round's work.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from control.core.paths import share_dir
from control.farm.catalogue import playbook
from control.farm.hostvars import hostvars
from control.farm.models import Node, Task
from control.registry.membership import upload_targets

KILL_PLAYBOOK = share_dir() / "playbooks" / "farm" / "kill.yml"

Upload = dict[str, Any]


def upload_target(space_id: int | None, cache: dict[int, Upload | None]) -> Upload | None:
    """Where a task of ``space_id`` uploads its outputs: the first provider with SFTP and storage."""
    if not space_id:
        return None
    if space_id not in cache:
        chosen = None
        for target in upload_targets(space_id):
            if target.get("sftp_host") and target.get("path"):
                chosen = {"sftp_host": target["sftp_host"], "sftp_port": target.get("sftp_port") or 22,
                          "sftp_user": target.get("sftp_user") or "", "storage_path": target["path"],
                          "space_id": space_id, "provider": target.get("name")}
                break
        cache[space_id] = chosen
    return cache[space_id]


def job_hostvars(node: Node) -> dict[str, Any]:
    """A host of the job: the node's hostvars, where its INI file is, and empty work lists."""
    return {**hostvars(node), "zonefarm_config_path": node.config_path, "zonefarm_batch": [],
            "zonefarm_kills": []}


def build_inventory(tasks: list[Task], kills: list[Task], lease: int) -> tuple[dict[str, Any], list[Path]]:
    """The job's inventory (registry nodes as hosts, one group per task type) and its plays.

    ``tasks`` and ``kills`` carry their node (``task.node``); a kill also its ``kill_reason``.
    """
    hosts: dict[str, dict[str, Any]] = {}
    groups: dict[str, set[str]] = defaultdict(set)
    uploads: dict[int, Upload | None] = {}
    for task in tasks:
        node = task.node
        hv = hosts.setdefault(node.name, job_hostvars(node))
        hv["zonefarm_task_lease"] = lease
        hv["zonefarm_batch"].append({
            "id": task.id, "attempt": task.attempt, "name": task.name, "params": task.params or {},
            "timeout": task.timeout, "upload": upload_target(task.space_id, uploads)})
        groups[f"zonefarm_type_{task.name}"].add(node.name)
    for task in kills:
        node = task.node
        hv = hosts.setdefault(node.name, job_hostvars(node))
        hv["zonefarm_kills"].append({"id": task.id, "attempt": task.attempt, "reason": task.kill_reason})
        groups["zonefarm_kill"].add(node.name)
    inventory = {"all": {"hosts": hosts,
                         "children": {g: {"hosts": {h: {} for h in sorted(members)}}
                                      for g, members in sorted(groups.items())}}}
    plays = [KILL_PLAYBOOK] if kills else []
    plays += [playbook(name) for name in sorted({t.name for t in tasks})]  # the task-type catalogue
    return inventory, plays

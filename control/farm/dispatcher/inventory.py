"""What one dispatch round hands Ansible: the job's inventory and the plays it imports.

A round's job covers every node that has something to do: the tasks claimed for it
(hostvar ``zonefarm_batch``, group ``zonefarm_type_<name>``) and the kills the reaper
handed out (hostvar ``zonefarm_kills``, group ``zonefarm_kill``). A host's variables are
how Ansible reaches it (:func:`control.farm.hostvars.connection`, the same as
``GET /inventory``'s) plus what only a job needs: the node's work dir, where its INI
file is (the runner reads the node's key from it; the key itself is never in the
inventory) and the round's work. Only values held to strict patterns: nothing a node
sends as free text (labels) reaches a job.

**The inventory is data.** Everything in it came from users or nodes at some point (params,
task names, labels, registration fields, space and provider names) and Ansible renders a
trusted string that looks like a template: ``{{ lookup('pipe', ...) }}`` in a param would
run on the dispatcher. So the job's inventory is written as YAML whose root is tagged
``!unsafe`` (:func:`render`): every string under it, key or value, is untrusted, Ansible
never templates it, and data tagging in ansible-core 2.19 keeps it untrusted through the
filters and module arguments of ``playbooks/tasks/common/launch.yml``, so the launch module
gets it byte for byte. Nothing is sanitised or escaped; nothing needs to be.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from control.core.paths import share_dir
from control.farm.catalogue import playbook
from control.farm.hostvars import connection
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


# Characters a YAML reader refuses or folds inside a double-quoted scalar (C1 controls and DEL,
# NEL and the Unicode line/paragraph separators, surrogates, non-characters): written as \u escapes.
_YAML_ESCAPE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def render(inventory: dict[str, Any]) -> str:
    """The job's inventory as YAML: ``!unsafe`` followed by the inventory as JSON (a YAML flow mapping).

    ansible-core 2.19 marks every value constructed under an ``!unsafe`` node untrusted, keys
    and nested values alike, and constructs each scalar with its own type (a quoted "true"
    stays a string), so the whole inventory is data: nothing in it is ever rendered as a
    template. JSON keeps writing it as fast as before; the few characters YAML reads
    differently from JSON inside a string are escaped, so every string arrives byte for
    byte. ``tests/security/test_template_injection.py`` proves both.
    """
    text = json.dumps(inventory, ensure_ascii=False, separators=(",", ":"))
    return "!unsafe " + _YAML_ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def job_hostvars(node: Node) -> dict[str, Any]:
    """A host of the job: how to reach the node, its work dir and INI file, and empty work lists."""
    return {**connection(node), "zonefarm_workdir": node.workdir, "zonefarm_config_path": node.config_path,
            "zonefarm_batch": [], "zonefarm_kills": []}


def build_inventory(tasks: list[Task], kills: list[Task], lease: int,
                    targets: dict[int, Upload] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """The job's inventory (registry nodes as hosts, one group per task type) and its plays.

    ``tasks`` and ``kills`` carry their node (``task.node``); a kill also its ``kill_reason``.
    ``targets``: each uploading task's provider, chosen by ``control.farm.uploads.plan``; a
    task without one gets the first provider with SFTP and storage, as before.
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
            "timeout": task.timeout, "limits": task.limits or {},
            "upload": (targets or {}).get(task.id) or upload_target(task.space_id, uploads)})
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

"""Attack: a template in anything a user or a node sends, run by the dispatcher's Ansible.

Before the sandbox, task params were host variables of the dispatcher's job and the launch
play rendered them: ``{{ lookup('pipe', 'id') }}`` in a shell task's argv ran on the
dispatcher, ``{% raw %}`` failed the whole host's launch (every task of the round released).
Now the job's inventory is data (``control.farm.dispatcher.inventory.render``): for every
task type and every string field of its schema, a template arrives at the task byte for
byte and nothing runs; labels and registration fields the same; a param the launch module
cannot run fails its own task only.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.core.db import connection, write_transaction
from control.farm import states
from tests.conftest import NODES_SECRET
from tests.support.nodes import SignedNode
from tests.support.secfarm import SecFarm, support_spaces
from tests.support.sshd import Sshd

pytestmark = pytest.mark.slow
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the farm: worker side

# What a task of each built-in type needs besides the field under attack; other types get a generic fill.
BASE: dict[str, dict[str, Any]] = {
    "shell": {"argv": ["true"]},
    "pipeline": {"generate": [["true"]], "outputs": ["out.txt"]},
    "container": {"image": "zonefarm-test/busybox:1", "pull": "never"},
}
# Bytes YAML and JSON read differently inside a string, and characters a YAML reader refuses raw.
AWKWARD = "nel\x85 ls\u2028 del\x7f tab\t nl\n quote\" backslash\\ emoji\U0001F600 true"


def payloads(marker: Path) -> list[str]:
    return [f"{{{{ lookup('pipe', 'touch {marker}') }}}}",
            "{% raw %}",
            "{{ 6*7 }}{# c #}{% if true %}yes{% endif %}" + AWKWARD]


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return _resolve(node, root)
    return schema


def string_slots(schema: dict[str, Any], root: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple]:
    """Every place in params a free string goes: a path of keys and list indexes (0)."""
    schema = _resolve(schema, root)
    if "enum" in schema or "const" in schema:
        return
    kind = schema.get("type")
    if kind == "string":
        yield path
    elif kind == "array" and isinstance(schema.get("items"), dict):
        yield from string_slots(schema["items"], root, path + (0,))
    elif kind == "object":
        for name, sub in (schema.get("properties") or {}).items():
            yield from string_slots(sub, root, path + (name,))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            yield from string_slots(extra, root, path + ("ZF_PARAM",))


def _fill(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    schema = _resolve(schema, root)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "array":
        return [_fill(schema.get("items") or {"type": "string"}, root)]
    if kind == "object":
        return {k: _fill(schema["properties"][k], root) for k in schema.get("required", [])}
    return "true"


def with_value(params: dict[str, Any], path: tuple[Any, ...], value: str) -> dict[str, Any]:
    out = copy.deepcopy(params)
    node: Any = out
    for i, key in enumerate(path):
        last = i == len(path) - 1
        nxt = path[i + 1] if not last else None
        if isinstance(key, int):
            if not node:
                node.append(None)
            if last:
                node[0] = value
            else:
                if not isinstance(node[0], (list, dict)):
                    node[0] = [] if isinstance(nxt, int) else {}
                node = node[0]
        else:
            if last:
                node[key] = value
            else:
                if not isinstance(node.get(key), (list, dict)):
                    node[key] = [] if isinstance(nxt, int) else {}
                node = node[key]
    return out


def _space(farm: SecFarm) -> int:
    """A space with a provider that takes uploads (on a closed port), so the dispatcher has an
    upload target and launches pipeline tasks (their upload then fails, which is fine here)."""
    api = farm.api
    user, token = api.user_with_token("inject")
    resp = api.post("/spaces", token=token, json={"name": "inject-space"})
    assert resp.status_code == 201, resp.text
    reg = api.post("/providers", token=api.root, json={
        "name": "inject-prov", "domain": "inject.example.org", "admin_email": "ops@example.org",
        "sftp_host": "127.0.0.1", "sftp_port": 9, "sftp_user": "nobody", "storage_path": "/nonexistent"})
    assert reg.status_code == 201, reg.text
    ticket = api.post(f"/spaces/{resp.json()['id']}/support_tokens", token=token, json={})
    support = api.post(f"/providers/{reg.json()['provider']['id']}/supports", token=reg.json()["token"],
                       json={"token": ticket.json()["token"], "size": 1 << 30})
    assert support.status_code == 201, support.text
    return int(resp.json()["id"])


@SQLITE
def test_every_string_field_of_every_type_arrives_as_data(farm: SecFarm, tmp_path: Path) -> None:
    marker = Path("/tmp") / f"zonefarm-injected-{uuid.uuid4().hex}"
    work = farm.add_node("wk1", concurrency=80)
    space = _space(farm)
    types = farm.api.get("/task-types", token=farm.api.root).json()
    assert {t["name"] for t in types} >= {"shell", "pipeline", "container"}
    accepted: dict[int, dict[str, Any]] = {}
    refused: list[tuple[str, tuple[Any, ...], str]] = []
    covered: set[tuple[str, tuple[Any, ...]]] = set()
    for ttype in types:
        name, schema = ttype["name"], ttype["params_schema"] or {"type": "object"}
        base = BASE.get(name) or _fill(schema, schema)
        slots = list(string_slots(schema, schema))
        assert slots or name not in BASE, f"no string field found in {name}'s schema"
        for slot in slots:
            for payload in payloads(marker):
                params = with_value(base, slot, payload)
                extra = {"space": space} if name == "pipeline" else {}
                resp = farm.api.post("/tasks", token=farm.api.root,
                                     json={"name": name, "params": params, "max_attempts": 1, **extra})
                covered.add((name, slot))
                if resp.status_code == 422:  # the field's own pattern keeps templates out: safe too
                    assert str(slot[0]) in resp.text, resp.text
                    refused.append((name, slot, resp.json()["error"]["message"]))
                    continue
                assert resp.status_code == 201, resp.text
                accepted[resp.json()["id"]] = params
    # what the task itself sees: every payload as an argument and in its environment, printed back
    seen = payloads(marker)
    echo = farm.submit("shell", {"argv": ["printf", "%s\\n--\\n", *seen], "env": {"ZF_A": seen[0]}})
    env = farm.submit("shell", {"argv": ["sh", "-c", 'printf "%s" "$ZF_A"'], "env": {"ZF_A": seen[2]}})
    good = [farm.submit("shell", {"argv": ["echo", f"good-{i}"]})["id"] for i in range(3)]
    farm.start_dispatcher("d1")

    assert farm.wait(echo["id"])["state"] == "succeeded"
    assert farm.log(echo["id"]) == "".join(f"{p}\n--\n" for p in seen)
    assert farm.wait(env["id"])["state"] == "succeeded" and farm.log(env["id"]) == seen[2]
    for task_id in good:  # nothing in the round's other tasks held them back
        assert farm.wait(task_id)["state"] == "succeeded"
    for task_id, params in accepted.items():
        done = farm.wait(task_id)
        assert done["state"] in ("succeeded", "failed"), done
        spec = json.loads((work / "tasks" / str(task_id) / "1" / "spec.json").read_text())
        assert spec["params"] == params, f"task {task_id}: params changed on the way"
    assert not marker.exists(), "a param ran a command on the dispatcher"
    assert ("shell", ("argv", 0)) in covered and ("pipeline", ("generate", 0, 0)) in covered
    assert any(n == "container" for n, _ in covered)
    assert len(accepted) >= 3 * 5, (len(accepted), refused)


@SQLITE
def test_labels_and_registration_fields_are_data(farm: SecFarm) -> None:
    marker = Path("/tmp") / f"zonefarm-injected-{uuid.uuid4().hex}"
    payload = f"{{{{ lookup('pipe', 'touch {marker}') }}}}"
    work = farm.add_node("wk1")
    config = farm.config_dir("wk1") / "node.ini"
    node = SignedNode(farm.api, "wk1", NODES_SECRET)
    resp = node.register(workdir=str(work), config_path=str(config), ansible_connection="local",
                         python=__import__("sys").executable, concurrency=4, hostname=payload + "{% raw %}",
                         labels={"owner": payload, "raw": "{% raw %}"}, resources={payload: 1, "cpu": 2})
    assert resp.status_code == 200, resp.text
    shown = farm.api.get("/nodes/wk1", token=farm.api.root).json()
    assert shown["labels"] == {"owner": payload, "raw": "{% raw %}"}
    farm.start_dispatcher("d1")
    task = farm.submit("shell", {"argv": ["echo", "ran"]})
    assert farm.wait(task["id"])["state"] == "succeeded" and farm.log(task["id"]) == "ran\n"
    assert not marker.exists(), "a registration field ran a command on the dispatcher"


@SQLITE
def test_provider_fields_are_data(farm: SecFarm, provider_sshd: Sshd, storage: tuple[Path, Path]) -> None:
    """A provider's fields reach the job as its pipeline tasks' upload target: they are data too.

    The name is held to a pattern (a template is a 422 naming it); the storage path is free text
    after its leading slash, and travels in the job inventory and the task's spec.json.
    """
    _, spaces = storage
    marker = Path("/tmp") / f"zonefarm-injected-{uuid.uuid4().hex}"
    payload = f"{{{{ lookup('pipe','touch {marker}') }}}}"
    named = farm.api.post("/providers", token=farm.api.root, json={
        "name": payload, "domain": "evil.example.org", "admin_email": "ops@example.org"})
    assert named.status_code == 422 and "name" in named.json()["error"]["message"], named.text
    storage_path = f"/srv/{payload}{{% raw %}}"
    (space,) = support_spaces(farm, provider_sshd, spaces, ("injected",), storage_path=storage_path)
    task = farm.submit("pipeline", {"generate": [["sh", "-c", "echo uploaded > out.txt"]], "outputs": ["out.txt"]},
                       space=space, max_attempts=1)
    farm.start_dispatcher("d1")
    done = farm.wait(task["id"], timeout=90)
    assert done["state"] == "succeeded", farm.log(task["id"])
    upload = farm.spec("wk1", task["id"])["upload"]
    assert upload["storage_path"] == f"{storage_path}/{space}" and upload["provider"] == "prov1", upload
    assert (spaces / str(space) / f"task-{task['id']}" / "out.txt").read_text() == "uploaded\n"
    assert not marker.exists(), "a provider's storage path ran a command on the dispatcher"


@SQLITE
def test_a_param_the_node_cannot_run_fails_only_its_own_task(farm: SecFarm) -> None:
    """A task stored before the API refused NUL bytes (or by any path around it) still fails alone."""
    farm.add_node("wk1", concurrency=10)
    good = [farm.submit("shell", {"argv": ["echo", f"good-{i}"]})["id"] for i in range(4)]
    with connection(), write_transaction():
        bad = states.enqueue({"name": "shell", "params": {"argv": ["echo", "nul\x00byte"]}, "queue": "default",
                              "target_kind": "any", "max_attempts": 3}, "inserted around the API").id
    farm.start_dispatcher("d1")
    done = farm.wait(bad)
    assert done["state"] == "failed" and done["attempt"] == 1  # not retried: it would fail the same way
    assert "refused by node wk1" in done["reason"] and "NUL" in done["reason"]
    for task_id in good:
        assert farm.wait(task_id)["state"] == "succeeded"
        assert [e["to_state"] for e in farm.events(task_id)].count("assigned") == 1  # never released

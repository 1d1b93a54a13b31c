"""Per-node credentials (issue 12) over real HTTP on both databases.

Each node signs with its own key, ``derive_node_key(nodes_secret, name, generation)``,
and its name and generation are inside the signature. These tests fail on the shared
secret design: a rewritten ``X-Zonefarm-Node`` header, a node re-registering another
node's name, a registration signed with the bare nodes secret, node A's key used as B.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control.core.db import connection
from control.farm.models import Node, NodeJoinToken, Task
from control.node.config import load_node_config, write_node_config
from control.node.signing import derive_node_key
from tests.conftest import NODES_SECRET, ROOT
from tests.support.client import Api
from tests.support.nodes import SignedNode


def registered(api: Api, name: str, **kw: object) -> SignedNode:
    node = SignedNode(api, name, NODES_SECRET)
    resp = node.register(**kw)
    assert resp.status_code == 201, resp.text
    return node


def node_row(name: str) -> Node:
    with connection():
        return Node.get(Node.name == name)


def test_a_rewritten_node_header_does_not_verify(api: Api) -> None:
    """The issue's attack: wk-evil signs a finished report, then relabels it as localhost's."""
    registered(api, "localhost")
    evil = registered(api, "wk-evil")
    resp = api.post("/tasks", token=api.root, json={"name": "shell", "params": {"argv": ["true"]},
                                                    "target": {"node": "localhost"}})
    assert resp.status_code == 201, resp.text
    tid = resp.json()["id"]
    with connection():  # as a dispatcher's claim would
        Task.update(state="assigned", attempt=1, node=Node.get(Node.name == "localhost").id,
                    assigned_at=time.time(), lease_expires_at=time.time() + 60).where(Task.id == tid).execute()
    for event in ({"event": "log", "attempt": 1, "data": "forged\n", "offset": 0},
                  {"event": "finished", "attempt": 1, "exit_code": 0}):
        forged = evil.request("POST", f"/tasks/{tid}/callback", event, headers={"X-Zonefarm-Node": "localhost"})
        assert forged.status_code == 401 and "bad signature" in forged.json()["error"]["message"]
        # signed honestly as itself, the name matches but it is not its task
        assert evil.request("POST", f"/tasks/{tid}/callback", event).status_code == 403
    task = api.get(f"/tasks/{tid}", token=api.root).json()
    assert task["state"] == "assigned"
    assert api.get(f"/tasks/{tid}/log", token=api.root).json()["text"] == ""


def test_another_node_cannot_hijack_a_registration(api: Api) -> None:
    victim = registered(api, "wk1", ansible_host="10.0.0.5")
    evil = registered(api, "wk-evil")
    takeover = victim.registration(ansible_host="203.0.113.9", ansible_user="evil", workdir="/srv/evil/work")
    assert evil.request("POST", "/nodes/register", takeover).status_code == 403
    relabelled = evil.request("POST", "/nodes/register", takeover, headers={"X-Zonefarm-Node": "wk1"})
    assert relabelled.status_code == 401
    as_victim = evil.request("POST", "/nodes/register", takeover, name="wk1")  # its key, wk1's name
    assert as_victim.status_code == 401
    shared = evil.request("POST", "/nodes/register", takeover, name="wk1", key=NODES_SECRET)
    assert shared.status_code == 401
    row = node_row("wk1")
    assert (row.ansible_host, row.ansible_user) == ("10.0.0.5", "root")
    # the node itself may change its connection data
    assert victim.register(ansible_host="10.0.0.6").status_code == 200
    assert node_row("wk1").ansible_host == "10.0.0.6"


def test_registering_needs_a_credential_made_for_the_name(api: Api) -> None:
    stranger = SignedNode(api, "wk-new", NODES_SECRET)
    body = stranger.registration()
    for key in (NODES_SECRET, derive_node_key(NODES_SECRET, "wk-other"), "0" * 64):
        resp = stranger.request("POST", "/nodes/register", body, key=key)
        assert resp.status_code == 401, resp.text
    assert api.get("/nodes/wk-new", token=api.root).status_code == 404
    assert stranger.register().status_code == 201  # the key the controller derives for wk-new


def test_a_stolen_key_of_node_a_cannot_act_as_node_b(api: Api) -> None:
    a = registered(api, "node-a")
    registered(api, "node-b")
    for path, body in (("/nodes/node-b/heartbeat", {}), ("/nodes/register", a.registration(name="node-b"))):
        resp = a.request("POST", path, body, name="node-b")
        assert resp.status_code == 401 and "bad signature" in resp.json()["error"]["message"]
        for generation in (1, 7):  # nor as a newer generation of B's key
            assert a.request("POST", path, body, name="node-b", generation=generation).status_code == 401
    assert node_row("node-b").key_generation == 0


def test_rotation_keeps_the_previous_key_for_a_grace_period(api: Api) -> None:
    gen0 = registered(api, "wk1")
    gen1 = gen0.with_generation(1)
    assert gen1.heartbeat().status_code == 200
    row = node_row("wk1")
    assert (row.key_generation, row.key_previous_generation) == (1, 0) and row.key_previous_until > time.time()
    assert gen0.heartbeat().status_code == 200  # a runner started before the rotation still reports
    with connection():
        Node.update(key_previous_until=time.time() - 1).where(Node.name == "wk1").execute()
    late = gen0.heartbeat()
    assert late.status_code == 401 and "revoked" in late.json()["error"]["message"]
    assert gen1.heartbeat().status_code == 200
    assert api.get("/nodes/wk1", token=api.root).json()["key_generation"] == 1


def test_deregistering_revokes_every_key(api: Api) -> None:
    gen0 = registered(api, "wk1")
    assert gen0.with_generation(1).heartbeat().status_code == 200  # gen 0 now in its grace period
    assert api.delete("/nodes/wk1", token=api.root).status_code == 204
    for generation in (0, 1):
        resp = gen0.with_generation(generation).register()
        assert resp.status_code == 401 and "revoked" in resp.json()["error"]["message"]
    assert gen0.with_generation(2).register().status_code == 200


def join_token(api: Api, name: str, ttl: int = 3600) -> str:
    resp = api.post("/nodes/tokens", token=api.root, json={"name": name, "ttl": ttl})
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == name and resp.json()["token"].startswith("zfj_")
    return resp.json()["token"]


def enroll(api: Api, token: str, registration: dict[str, object]) -> object:
    return api.post("/nodes/enroll", json={"token": token, "registration": registration})


def test_a_join_token_enrolls_once(api: Api) -> None:
    node = SignedNode(api, "wk-join", "unused-by-this-node-000")
    _, user = api.user_with_token("ursula")
    assert api.post("/nodes/tokens", token=user, json={"name": "wk-join"}).status_code == 403
    token = join_token(api, "wk-join")
    wrong_name = enroll(api, token, node.registration(name="wk-other"))
    assert wrong_name.status_code == 403  # refused without spending the token
    first = enroll(api, token, node.registration())
    assert first.status_code == 201, first.text
    credential = first.json()["credential"]
    assert credential == {"node_key": derive_node_key(NODES_SECRET, "wk-join", 0), "key_generation": 0}
    assert first.json()["node"]["state"] == "online"
    again = enroll(api, token, node.registration())
    assert again.status_code == 401 and "already used" in again.json()["error"]["message"]
    node.key = credential["node_key"]
    assert node.heartbeat().status_code == 200
    # a token for a registered name is refused; the node re-registers with its own key
    assert api.post("/nodes/tokens", token=api.root, json={"name": "wk-join"}).status_code == 409
    with connection():
        assert NodeJoinToken.get(NodeJoinToken.name == "wk-join").used_at is not None
        assert token not in json.dumps([t.token_hash for t in NodeJoinToken.select()])


def test_an_expired_join_token_is_refused(api: Api) -> None:
    node = SignedNode(api, "wk-late", NODES_SECRET)
    token = join_token(api, "wk-late", ttl=60)
    with connection():
        NodeJoinToken.update(expires_at=time.time() - 1).where(NodeJoinToken.name == "wk-late").execute()
    resp = enroll(api, token, node.registration())
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]
    assert api.get("/nodes/wk-late", token=api.root).status_code == 404
    assert enroll(api, "zfj_" + "x" * 40, node.registration()).status_code == 401
    bad_ttl = api.post("/nodes/tokens", token=api.root, json={"name": "wk-late", "ttl": 10})
    assert bad_ttl.status_code == 422 and "ttl" in bad_ttl.json()["error"]["message"]


def test_a_deregistered_node_re_enrolls_with_a_token_at_its_new_generation(api: Api) -> None:
    old = registered(api, "wk1")
    assert api.delete("/nodes/wk1", token=api.root).status_code == 204
    resp = enroll(api, join_token(api, "wk1"), old.registration())
    assert resp.status_code == 201, resp.text
    assert resp.json()["credential"]["key_generation"] == 1
    assert old.heartbeat().status_code == 401
    assert old.with_generation(1).heartbeat().status_code == 200


@pytest.mark.parametrize("workdir", ["/etc/cron.d", "/", "/usr", "/usr/local/zf", "/var", "/home", "/tmp",
                                     "/proc/1", "/var/log/zf", "/srv/zf/../../etc/cron.d", "/srv/./zf",
                                     "/srv//zf", "relative/work"])
def test_workdir_must_not_be_a_system_directory(api: Api, workdir: str) -> None:
    resp = SignedNode(api, "wk1", NODES_SECRET).register(workdir=workdir)
    assert resp.status_code == 422, resp.text
    assert "workdir" in resp.json()["error"]["message"]


@pytest.mark.parametrize("workdir", ["/var/lib/zonefarm/work", "/srv/zonefarm/work/wk1", "/home/zf/work",
                                     "/tmp/zf-wk1/work", "/opt/zonefarm/work/"])
def test_ordinary_workdirs_are_accepted(api: Api, workdir: str) -> None:
    assert SignedNode(api, "wk1", NODES_SECRET).register(workdir=workdir).status_code == 201


def test_provider_identity_comes_from_its_token_only(api: Api) -> None:
    """The change feed and support paths: no header names a provider or a node for them."""
    providers = []
    for name in ("prov-a", "prov-b"):
        resp = api.post("/providers", token=api.root, json={"name": name, "domain": f"{name}.example.org",
                                                            "admin_email": "ops@example.org"})
        assert resp.status_code == 201, resp.text
        providers.append(resp.json())
    a, b = providers
    node = registered(api, "wk1")
    signed_as_node = node.request("GET", "/changes?since=0&timeout=0")
    assert signed_as_node.status_code == 401  # a node signature is no credential for the feed
    spoof = {"X-Zonefarm-Node": "wk1", "X-Zonefarm-Provider": str(b["provider"]["id"])}
    seen = api.get("/providers", token=a["token"], headers=spoof).json()
    assert [p["id"] for p in seen["items"]] == [a["provider"]["id"]]
    _, user = api.user_with_token("alice")
    space = api.post("/spaces", token=user, json={"name": "climate"}).json()["id"]
    put = api.put(f"/spaces/{space}/providers/{b['provider']['id']}", token=a["token"], headers=spoof,
                  json={"size": 1 << 30})
    assert put.status_code == 403


def test_cli_enroll_writes_the_key_and_the_node_then_heartbeats(api: Api, tmp_path: Path) -> None:
    config = write_node_config(tmp_path / "node.ini", name="wk-cli", api_url=api.base,
                               workdir=str(tmp_path / "work"), ansible_connection="local")
    token_file = tmp_path / "join.token"
    token_file.write_text(join_token(api, "wk-cli") + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def node(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "control.cli", "node", *argv, "--node-config", str(config)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    token_file.chmod(0o644)
    refused = node("enroll", "--join-token-file", str(token_file))
    assert refused.returncode == 1 and "chmod 600" in refused.stderr
    token_file.chmod(0o600)
    done = node("enroll", "--join-token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "wk-cli"
    loaded = load_node_config(config)
    assert loaded.node_key == derive_node_key(NODES_SECRET, "wk-cli") and loaded.key_generation == 0
    assert loaded.key_generation == 0 and (config.stat().st_mode & 0o777) == 0o600
    assert loaded.node_key not in done.stdout + done.stderr
    beat = node("heartbeat")
    assert beat.returncode == 0, beat.stderr
    assert node("enroll", "--join-token-file", str(token_file)).returncode == 1  # spent


def test_a_node_config_holding_the_nodes_secret_is_refused(tmp_path: Path) -> None:
    from control.node.config import NodeConfigError
    config = write_node_config(tmp_path / "node.ini", name="wk1", api_url="http://zone", nodes_secret="s" * 20)
    with pytest.raises(NodeConfigError, match="nodes_secret does not belong on a node"):
        load_node_config(config)


def test_the_worker_role_writes_a_derived_key_and_never_the_nodes_secret(tmp_path: Path) -> None:
    """The role's node.ini template, rendered by ansible-playbook with the role's filter plugin."""
    dest = tmp_path / "node.ini"
    playbook = tmp_path / "render.yml"
    playbook.write_text(json.dumps([{
        "name": "Render node.ini", "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable, "ansible_managed": "test", "common_user": "zf",
                 "worker_zone_url": "http://zone:8700",
                 "worker_name": "wk7", "worker_nodes_secret": NODES_SECRET, "worker_key_generation": 3,
                 "worker_region": "eu", "worker_queues": ["default"], "worker_concurrency": 2,
                 "worker_workdir": str(tmp_path / "work"), "worker_ansible_host": "127.0.0.1",
                 "worker_ansible_port": 22, "worker_ansible_user": "zf", "worker_ansible_connection": "local",
                 "worker_python": sys.executable, "worker_labels": {},
                 "worker_resources": {"gpu": 2, "memory": 1 << 33}, "worker_heartbeat_interval": 15,
                 "worker_task_nice": 0, "worker_upload_key": "/k", "worker_upload_known_hosts": "/h",
                 "worker_sandbox_policy": "/etc/zonefarm-sandbox.ini", "common_venv": "/opt/zonefarm/venv",
                 "worker_container_images": ["ghcr.io/openzim/*", "busybox:*"],
                 "worker_ca_file": "/etc/zonefarm/ca.pem"},
        "tasks": [{"name": "Write", "no_log": True, "ansible.builtin.template": {
            "src": str(ROOT / "roles" / "worker" / "templates" / "node.ini.j2"), "dest": str(dest),
            "mode": "0600"}}],
    }]))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_FILTER_PLUGINS": str(ROOT / "roles" / "worker" / "filter_plugins")}
    proc = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = dest.read_text()
    assert NODES_SECRET not in text and NODES_SECRET not in proc.stdout + proc.stderr
    config = load_node_config(dest)
    assert config.node_key == derive_node_key(NODES_SECRET, "wk7", 3) and config.key_generation == 3
    assert config.sandbox_policy == "/etc/zonefarm-sandbox.ini"
    assert config.sandbox_command == "/opt/zonefarm/venv/bin/zonefarm-sandbox"
    assert config.container_images == ("ghcr.io/openzim/*", "busybox:*")
    assert config.node_key not in proc.stdout + proc.stderr
    assert config.ca_file == "/etc/zonefarm/ca.pem"
    assert config.resources == {"gpu": 2, "memory": 1 << 33}  # reported over the detected ones

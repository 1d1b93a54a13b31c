"""The Ansible deployment, for real: syntax, lint, argument validation, and a local deploy.

The local deploy runs the whole site.yml (every group on localhost: storage as a local
directory, zone, cluster_manager, provider, worker) with ansible-playbook into a throwaway
root, under a private supervisord, on a free loopback port; then checks the API answers, the
worker is online and runs a task through the deployed dispatcher, a supported space gets its
directory on the provider's storage, the second run changes nothing, bad input fails naming
the variable, and decommissioning drains the worker. Nothing is mocked.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from control.node.signing import derive_node_key
from tests.support.leaks import assert_no_secrets, files_under
from tests.support.pg import PgCluster
from tests.support.procs import background
from tests.support.waiting import wait_for

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV") or ROOT / ".venv") / "bin"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZONEFARM_", "ANSIBLE_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _recap(out: str) -> dict[str, int]:
    """Totals of the play recap; a failing host makes the caller show the whole output."""
    totals = {"ok": 0, "changed": 0, "unreachable": 0, "failed": 0}
    found = RECAP.findall(out)
    assert found, f"no play recap in output:\n{out[-4000:]}"
    for _host, ok, changed, unreachable, failed in found:
        totals["ok"] += int(ok)
        totals["changed"] += int(changed)
        totals["unreachable"] += int(unreachable)
        totals["failed"] += int(failed)
    return totals


def _changed_tasks(out: str) -> list[str]:
    """The TASK headers whose block reports a change, so a failing idempotence check says where."""
    blocks = re.split(r"^(?=TASK \[)", out, flags=re.M)
    return [block.splitlines()[0] for block in blocks
            if block.startswith("TASK [") and re.search(r"^changed: ", block, re.M)]


def _build(base: Path, env: dict[str, str]) -> list[str]:
    """A private wheelhouse and share archive, so another run of the suite or `make up`
    rebuilding var/dist from a tree being edited cannot change them between our two runs."""
    wheelhouse = base / "wheelhouse"
    if (ROOT / "var" / "wheelhouse").is_dir():  # the dependency wheels: reuse, no index needed
        subprocess.run(["cp", "-r", str(ROOT / "var" / "wheelhouse"), str(wheelhouse)], check=True, timeout=120)
    built = _run(["scripts/install-collections.sh"], env, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    built = _run(["scripts/build-wheelhouse.sh"], {**env, "WHEELHOUSE": str(wheelhouse), "DIST": str(base / "dist")},
                 timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    return ["-e", f"common_wheelhouse_src={base / 'dist' / 'zonefarm-wheelhouse.tar'}",
            "-e", f"common_share_src={base / 'dist' / 'zonefarm-share.tar'}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_site_syntax_check() -> None:
    result = _run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/local.yml", "--syntax-check", "site.yml"],
                  _env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile() -> None:
    """The whole project, as `make lint` runs it; skips and exclusions are in .ansible-lint with reasons."""
    result = _run([str(VENV_BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
                  _env(), timeout=400)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


@pytest.mark.parametrize(("role", "var", "value"), [
    ("common", "common_manage_user", "perhaps"),
    ("common", "common_service_manager", "upstart"),
    ("service", "service_stop_timeout", "soon"),
])
def test_argument_validation_names_the_variable(tmp_path: Path, role: str, var: str, value: str) -> None:
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.include_role:\n        name: {role}\n"
        "      vars:\n        service_name: x\n        service_command: /bin/true\n")
    result = _run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play),
                   "-e", f"{var}={value}"], _env(ANSIBLE_ROLES_PATH=str(ROOT / "roles")), timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Validating arguments against arg spec" in out, out
    assert var in out, out


@dataclass
class Deployed:
    root: Path
    listen: str
    secrets: dict[str, str]
    secrets_file: Path
    env: dict[str, str]
    dist: list[str]
    first: subprocess.CompletedProcess[str]

    @classmethod
    def prepare(cls, base: Path, **values: str) -> Deployed:
        """A local site under ``base``, not played yet: fresh secrets (and ``values``) in a 0600
        extra-vars file, a free port for the API, the collection built."""
        values = {"zonefarm_root_secret": secrets.token_hex(20), "zonefarm_nodes_secret": secrets.token_hex(20),
                  **values}
        secrets_file = base / "secrets.yml"
        secrets_file.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
        secrets_file.chmod(0o600)
        listen = f"127.0.0.1:{_free_port()}"
        env = _env(ZONEFARM_LOCAL_ROOT=str(base / "root"), ZONEFARM_LOCAL_LISTEN=listen)
        dist = _build(base, env)
        return cls(base / "root", listen, values, secrets_file, env, dist, None)  # type: ignore[arg-type]

    def play(self, *extra: str, playbook: str = "site.yml") -> subprocess.CompletedProcess[str]:
        return _run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/local.yml", playbook,
                     "--extra-vars", f"@{self.secrets_file}", *self.dist, *extra], self.env)

    @property
    def api(self) -> str:
        return f"http://{self.listen}/api/v1"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """As the administrator (the root secret), which is what `make up` prints."""
        headers = {"Authorization": f"Bearer {self.secrets['zonefarm_root_secret']}"}
        return requests.request(method, self.api + path, headers=headers, timeout=15, **kwargs)

    def submit(self, argv: list[str]) -> dict[str, Any]:
        answer = self.call("POST", "/tasks", json={"name": "shell", "params": {"argv": argv}})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def task(self, task_id: int) -> dict[str, Any]:
        answer = self.call("GET", f"/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_task(self, task_id: int, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        return wait_for(f"task {task_id} in {states}",
                         lambda: (t := self.task(task_id))["state"] in states and t, timeout)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    deployed = Deployed.prepare(tmp_path_factory.mktemp("deploy"))
    try:
        deployed.first = deployed.play()
        yield deployed
    finally:
        _run(["scripts/down.sh"], deployed.env, timeout=120)


@pytest.mark.timeout(900)
def test_local_deploy_api_healthy(deployed: Deployed) -> None:
    out = deployed.first.stdout + deployed.first.stderr
    assert deployed.first.returncode == 0, out[-6000:]
    totals = _recap(out)
    assert totals["failed"] == 0 and totals["unreachable"] == 0
    health = requests.get(f"http://{deployed.listen}/api/v1/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    # The admin credential works against the deployed API, and only the real one.
    headers = {"Authorization": f"Bearer {deployed.secrets['zonefarm_root_secret']}"}
    assert requests.get(f"http://{deployed.listen}/api/v1/users", headers=headers, timeout=10).status_code == 200
    bad = requests.get(f"http://{deployed.listen}/api/v1/users", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401


def test_local_deploy_secrets_private(deployed: Deployed) -> None:
    out = deployed.first.stdout + deployed.first.stderr
    for value in deployed.secrets.values():
        assert value not in out, "a secret leaked into the ansible-playbook output"
    for name in ("zonefarm.ini", "dispatcher.ini", "dispatcher_ed25519", "node.ini", "provider.ini",
                 "provider.token", "upload_ed25519"):
        mode = stat.S_IMODE((deployed.root / "etc" / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    ini = (deployed.root / "etc" / "zonefarm.ini").read_text()
    assert f"root_secret = {deployed.secrets['zonefarm_root_secret']}" in ini
    # The worker gets its own key, derived on the controller; the nodes secret stays on the zone.
    node_ini = (deployed.root / "etc" / "node.ini").read_text()
    assert deployed.secrets["zonefarm_nodes_secret"] not in node_ini
    assert f"node_key = {derive_node_key(deployed.secrets['zonefarm_nodes_secret'], 'localhost')}" in node_ini


def test_local_deploy_services_running(deployed: Deployed) -> None:
    conf = deployed.root / "supervisor" / "supervisord.conf"
    status = subprocess.run(["supervisorctl", "-c", str(conf), "status"], capture_output=True, text=True,
                            timeout=30, check=False)
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if line.strip()}
    assert lines.get("zonefarm-api") == "RUNNING", status.stdout
    assert lines.get("zonefarm-dispatcher") == "RUNNING", status.stdout
    assert lines.get("zonefarm-provider") == "RUNNING", status.stdout
    assert lines.get("zonefarm-node") == "RUNNING", status.stdout
    pub = (deployed.root / "etc" / "dispatcher_ed25519.pub").read_text()
    assert pub.startswith("ssh-ed25519 ")


def test_local_deploy_worker_registered_online(deployed: Deployed) -> None:
    node = deployed.call("GET", "/nodes/localhost")
    assert node.status_code == 200, node.text
    body = node.json()
    assert body["state"] == "online", body
    assert body["queues"] == ["default"] and body["concurrency"] == 1, body
    assert body["ansible_connection"] == "local", body
    # The dispatcher runs the task runner with the deployed venv, not the repository's.
    assert body["python"] == str(deployed.root / "opt" / "venv" / "bin" / "python"), body
    # The heartbeat keeps it fresh: last_seen moves on.
    first = body["last_seen"]
    wait_for("a heartbeat after registration",
              lambda: deployed.call("GET", "/nodes/localhost").json()["last_seen"] != first, timeout=40)


@pytest.mark.timeout(300)
def test_local_deploy_runs_a_shell_task(deployed: Deployed) -> None:
    """Through the deployed dispatcher: its share dir holds library/ and the farm playbooks."""
    task = deployed.submit(["sh", "-c", "echo deployed-$((6 * 7)); echo to-stderr >&2"])
    done = deployed.wait_task(task["id"], ("succeeded", "failed", "cancelled", "timed_out", "lost"))
    log = deployed.call("GET", f"/tasks/{task['id']}/log").json()
    assert done["state"] == "succeeded", (done, log)
    assert done["exit_code"] == 0 and done["node"] == "localhost", done
    assert "deployed-42" in log["text"], log
    # The job ran from the deployed tree (under the root), not from the checkout.
    jobs = deployed.root / "data" / "dispatch"
    assert jobs.is_dir() and any(jobs.iterdir()), f"no dispatcher job under {jobs}"


@pytest.mark.timeout(300)
def test_local_deploy_a_task_is_sandboxed(deployed: Deployed, tmp_path: Path) -> None:
    """The attacks of tests/security on what `make up` deployed (the pool launcher under supervisord): the
    task is not root (the agent and the dispatcher run as root here), reads neither node.ini nor the upload
    key, and a template in its argv arrives as data, rendered nowhere."""
    marker = tmp_path / "rendered"
    template = "{{ lookup('pipe', 'touch " + str(marker) + "') }}{% raw %}"
    private = [str(deployed.root / "etc" / name) for name in ("node.ini", "upload_ed25519", "zonefarm.ini")]
    script = ('echo "uid=$(id -u) groups=$(id -G)"; for f in "$1" "$2" "$3"; do '
              'if cat "$f" >/dev/null 2>&1; then echo "READ $f"; else echo "DENIED $f"; fi; done; '
              'printf "arg=%s\\n" "$4"')
    task = deployed.submit(["sh", "-c", script, "sh", *private, template])
    done = deployed.wait_task(task["id"], ("succeeded", "failed", "cancelled", "timed_out", "lost"))
    text = deployed.call("GET", f"/tasks/{task['id']}/log").json()["text"]
    assert done["state"] == "succeeded", (done, text)
    uid = int(re.search(r"uid=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert uid != 0, text
    assert all(f"DENIED {path}" in text for path in private) and "READ " not in text, text
    assert f"arg={template}" in text, text
    assert not marker.exists()
    # and the submissions the API refuses before anything runs
    for params in ({"argv": ["echo", "a\x00b"]}, {"argv": ["true"], "env": {"X": "a\x00b"}}):
        refused = deployed.call("POST", "/tasks", json={"name": "shell", "params": params})
        assert refused.status_code == 422 and "NUL" in refused.text, refused.text
    volume = deployed.call("POST", "/tasks", json={"name": "container", "params": {
        "image": "debian:12", "argv": ["true"], "volumes": {"/": "/hostroot"}}})
    assert volume.status_code == 422 and "params.volumes" in volume.text, volume.text


@pytest.mark.timeout(300)
def test_local_deploy_supported_space_gets_a_directory(deployed: Deployed) -> None:
    providers = deployed.call("GET", "/providers", params={"name": "localhost"}).json()["items"]
    assert [p["name"] for p in providers] == ["localhost"], providers  # registered once
    provider = providers[0]
    storage = deployed.root / "storage" / "spaces"
    assert provider["storage_path"] == str(storage), provider
    space = deployed.call("POST", "/spaces", json={"name": "deploy-climate"})
    assert space.status_code == 201, space.text
    space_id = space.json()["id"]
    # Support takes the provider's consent: a support token, redeemed with the token the role deployed.
    ticket = deployed.call("POST", f"/spaces/{space_id}/support_tokens", json={"provider": provider["id"]})
    assert ticket.status_code == 201, ticket.text
    provider_token = (deployed.root / "etc" / "provider.token").read_text().strip()
    support = requests.post(f"{deployed.api}/providers/{provider['id']}/supports", timeout=15,
                            json={"token": ticket.json()["token"], "size": 1 << 30},
                            headers={"Authorization": f"Bearer {provider_token}"})
    assert support.status_code == 201, support.text
    path = storage / str(space_id)
    wait_for(f"{path} made by the provider agent", path.is_dir, timeout=60)
    assert stat.S_IMODE(path.stat().st_mode) == 0o2770
    # A revoked support is noticed; the data stays.
    revoked = deployed.call("DELETE", f"/spaces/{space_id}/providers/{provider['id']}")
    assert revoked.status_code == 204, revoked.text
    wait_for("the revocation marker", lambda: any(path.iterdir()), timeout=60)
    assert path.is_dir()


@pytest.mark.timeout(600)
def test_local_deploy_second_run_changes_nothing(deployed: Deployed) -> None:
    assert deployed.first.returncode == 0, "first deploy failed"
    again = deployed.play()
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    assert _recap(out)["changed"] == 0, "changed on the second run: " + "; ".join(_changed_tasks(out))


def test_wheelhouse_rebuild_skipped_when_nothing_changed(deployed: Deployed) -> None:
    """A second build from the same tree leaves both archives as they are, without running pip (a
    re-run of `make up` spent 11-15 s there)."""
    base = deployed.root.parent
    tars = [base / "dist" / name for name in ("zonefarm-wheelhouse.tar", "zonefarm-share.tar")]
    before = [tar.stat().st_mtime_ns for tar in tars]
    again = _run(["scripts/build-wheelhouse.sh"],
                 {**deployed.env, "WHEELHOUSE": str(base / "wheelhouse"), "DIST": str(base / "dist")}, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "inputs unchanged since the last build" in again.stdout, again.stdout
    assert [tar.stat().st_mtime_ns for tar in tars] == before


@pytest.mark.timeout(600)
def test_make_up_rerun_skips_the_playbook_only_while_nothing_changed(deployed: Deployed, tmp_path: Path) -> None:
    """scripts/up.sh's skip: it plays when it has no record of a deploy, skips when the inputs match that
    record and every service runs, and plays again once a service is down. The playbook here is a one-task
    stand-in (ZONEFARM_PLAYBOOK, an input of the record) so the test times up.sh's decision, not a deploy;
    the smoke task each run submits goes through the deployed farm for real."""
    playbook = tmp_path / "stand-in.yml"
    playbook.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n"
                        "    - name: Stand in for site.yml\n      ansible.builtin.ping:\n")
    base = deployed.root.parent
    env = {**deployed.env, "VAR": str(base), "VENV": str(VENV_BIN.parent),
           "ZONEFARM_SECRETS": str(deployed.secrets_file),
           "ZONEFARM_PLAYBOOK": str(playbook), "ZONEFARM_SMOKE_TIMEOUT": "120"}
    skipped = "playbook skipped"
    conf = str(deployed.root / "supervisor" / "supervisord.conf")

    def up() -> str:
        run = _run(["scripts/up.sh"], env, timeout=300)
        out = run.stdout + run.stderr
        assert run.returncode == 0 and "zonefarm is up." in out, out[-4000:]
        return out

    assert skipped not in (first := up()) and "PLAY RECAP" in first, first[-3000:]
    assert skipped in (second := up()) and "PLAY RECAP" not in second, second[-3000:]
    stop = subprocess.run(["supervisorctl", "-c", conf, "stop", "zonefarm-provider"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    try:
        assert skipped not in (third := up()) and "PLAY RECAP" in third, third[-3000:]
    finally:
        subprocess.run(["supervisorctl", "-c", conf, "start", "zonefarm-provider"], capture_output=True,
                       timeout=60, check=False)


def test_local_deploy_logs_hold_no_secret(deployed: Deployed) -> None:
    """After a deploy, a re-run, a task and a provider's support: the services' logs, the
    dispatcher's job directories and the worker's task tree hold none of the credentials the
    deployment runs on (the 0600 files under etc/ are where they belong)."""
    etc = deployed.root / "etc"
    creds = {"root secret": deployed.secrets["zonefarm_root_secret"],
               "nodes secret": deployed.secrets["zonefarm_nodes_secret"],
               "localhost's node key": derive_node_key(deployed.secrets["zonefarm_nodes_secret"], "localhost"),
               "provider token": (etc / "provider.token").read_text().strip()}
    work = [Path(line.split("=", 1)[1].strip()) for line in (etc / "node.ini").read_text().splitlines()
            if line.replace(" ", "").startswith("workdir=")]
    logs = files_under(deployed.root / "log")
    assert any(p.stat().st_size for p in logs), f"no service wrote a log under {deployed.root / 'log'}"
    assert_no_secrets([*logs, *files_under(deployed.root / "data", *work)], creds,
                      extra={"the first deploy's output": deployed.first.stdout + deployed.first.stderr})


@pytest.mark.timeout(600)
def test_short_secret_refused_naming_the_variable(deployed: Deployed) -> None:
    bad = deployed.play("-e", "zonefarm_root_secret=tooshort")
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0, out[-4000:]
    assert "zone_root_secret must be at least 16 characters" in out, out[-4000:]
    assert "tooshort" not in out
    # The running API kept its old config.
    assert requests.get(f"http://{deployed.listen}/api/v1/healthz", timeout=10).status_code == 200


@pytest.mark.timeout(600)
def test_decommission_drains_the_worker(deployed: Deployed) -> None:
    """Last of the module: the running task finishes, the node takes nothing new, then it is gone."""
    # The task's own output is the proof it ran to its end: a sandboxed task writes nowhere else.
    running = deployed.submit(["sh", "-c", "sleep 6; echo decommission-finished"])
    wait_for("the long task running", lambda: deployed.task(running["id"])["state"] == "running", timeout=120)
    with background([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/local.yml", "playbooks/decommission.yml",
                     "--limit", "localhost", "--extra-vars", f"@{deployed.secrets_file}"],
                    cwd=ROOT, env=deployed.env) as proc:
        wait_for("the node draining", lambda: deployed.call("GET", "/nodes/localhost").json()["draining"],
                 timeout=120)
        # Queued while the node drains: it must not be taken.
        late = deployed.submit(["echo", "too late"])
        out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-6000:]
    assert _recap(out)["failed"] == 0
    done = deployed.task(running["id"])
    assert done["state"] == "succeeded", done
    assert "decommission-finished\n" in deployed.call("GET", f"/tasks/{running['id']}/log").json()["text"]
    late_state = deployed.task(late["id"])
    assert late_state["state"] == "queued" and late_state["node"] is None, late_state
    # Deregistered, and its agent stopped (so it cannot register again).
    node = deployed.call("GET", "/nodes/localhost")
    assert node.status_code == 404 or node.json()["state"] == "deregistered", node.text
    conf = deployed.root / "supervisor" / "supervisord.conf"
    status = subprocess.run(["supervisorctl", "-c", str(conf), "status", "zonefarm-node"], capture_output=True,
                            text=True, timeout=30, check=False)
    assert "RUNNING" not in status.stdout, status.stdout


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_zone_on_postgresql(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """zone_database_url pointing at a PostgreSQL server: the schema goes there and the API uses it."""
    name = f"zf_deploy_{os.getpid()}"
    pg_cluster.sql(f"CREATE DATABASE {name}")
    url = pg_cluster.url(name)
    site = Deployed.prepare(tmp_path, zonefarm_database_url=url)
    try:
        done = site.play(playbook="playbooks/zone.yml")
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        assert pg_cluster.password not in out, "the database password leaked into the output"
        health = requests.get(f"http://{site.listen}/api/v1/healthz", timeout=10).json()
        assert health["status"] == "ok" and "Postgres" in health["database"], health
        assert health["schema_version"] >= 1
        assert not (tmp_path / "root" / "data" / "zonefarm.db").exists(), "SQLite was used instead"
    finally:
        _run(["scripts/down.sh"], site.env, timeout=120)
        pg_cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

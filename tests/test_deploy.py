"""The Ansible deployment, for real: syntax, lint, argument validation, and a local deploy.

The local deploy runs the real roles (common, zone, cluster_manager, service) with
ansible-playbook against localhost into a throwaway root, under a private supervisord,
on a free loopback port; then checks the API answers, the second run changes nothing,
and bad input fails naming the variable. Nothing is mocked.
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

import pytest
import requests

from tests.support.pg import PgCluster

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
    first: subprocess.CompletedProcess[str]

    def play(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return _run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/local.yml",
                     "playbooks/zone.yml", "playbooks/cluster_manager.yml",
                     "--extra-vars", f"@{self.secrets_file}", *extra], self.env)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    base = tmp_path_factory.mktemp("deploy")
    values = {"zonefarm_root_secret": secrets.token_hex(20), "zonefarm_nodes_secret": secrets.token_hex(20)}
    secrets_file = base / "secrets.yml"
    secrets_file.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    secrets_file.chmod(0o600)
    listen = f"127.0.0.1:{_free_port()}"
    env = _env(ZONEFARM_LOCAL_ROOT=str(base / "root"), ZONEFARM_LOCAL_LISTEN=listen)
    built = _run(["scripts/install-collections.sh"], env, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    built = _run(["scripts/build-wheelhouse.sh"], env, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    deployed = Deployed(base / "root", listen, values, secrets_file, env, None)  # type: ignore[arg-type]
    try:
        deployed.first = deployed.play()
        yield deployed
    finally:
        _run(["scripts/down.sh"], env, timeout=120)


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
    for name in ("zonefarm.ini", "dispatcher.ini", "dispatcher_ed25519"):
        mode = stat.S_IMODE((deployed.root / "etc" / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    ini = (deployed.root / "etc" / "zonefarm.ini").read_text()
    assert f"root_secret = {deployed.secrets['zonefarm_root_secret']}" in ini


def test_local_deploy_services_running(deployed: Deployed) -> None:
    conf = deployed.root / "supervisor" / "supervisord.conf"
    status = subprocess.run(["supervisorctl", "-c", str(conf), "status"], capture_output=True, text=True,
                            timeout=30, check=False)
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if line.strip()}
    assert lines.get("zonefarm-api") == "RUNNING", status.stdout
    assert lines.get("zonefarm-dispatcher") == "RUNNING", status.stdout
    pub = (deployed.root / "etc" / "dispatcher_ed25519.pub").read_text()
    assert pub.startswith("ssh-ed25519 ")


@pytest.mark.timeout(600)
def test_local_deploy_second_run_changes_nothing(deployed: Deployed) -> None:
    assert deployed.first.returncode == 0, "first deploy failed"
    again = deployed.play()
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    changed = re.findall(r"^changed: .*$|^TASK \[.*$", out, re.M)
    assert _recap(out)["changed"] == 0, "\n".join(changed)


@pytest.mark.timeout(600)
def test_short_secret_refused_naming_the_variable(deployed: Deployed) -> None:
    bad = deployed.play("-e", "zonefarm_root_secret=tooshort")
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0, out[-4000:]
    assert "zone_root_secret must be at least 16 characters" in out, out[-4000:]
    assert "tooshort" not in out
    # The running API kept its old config.
    assert requests.get(f"http://{deployed.listen}/api/v1/healthz", timeout=10).status_code == 200


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_zone_on_postgresql(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """zone_database_url pointing at a PostgreSQL server: the schema goes there and the API uses it."""
    name = f"zf_deploy_{os.getpid()}"
    pg_cluster.sql(f"CREATE DATABASE {name}")
    url = pg_cluster.url(name)
    values = {"zonefarm_root_secret": secrets.token_hex(20), "zonefarm_nodes_secret": secrets.token_hex(20),
              "zonefarm_database_url": url}
    secrets_file = tmp_path / "secrets.yml"
    secrets_file.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    secrets_file.chmod(0o600)
    listen = f"127.0.0.1:{_free_port()}"
    env = _env(ZONEFARM_LOCAL_ROOT=str(tmp_path / "root"), ZONEFARM_LOCAL_LISTEN=listen)
    for script in ("scripts/install-collections.sh", "scripts/build-wheelhouse.sh"):
        built = _run([script], env, timeout=300)
        assert built.returncode == 0, built.stdout + built.stderr
    try:
        done = _run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory/local.yml", "playbooks/zone.yml",
                     "--extra-vars", f"@{secrets_file}"], env)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        assert pg_cluster.password not in out, "the database password leaked into the output"
        health = requests.get(f"http://{listen}/api/v1/healthz", timeout=10).json()
        assert health["status"] == "ok" and "Postgres" in health["database"], health
        assert health["schema_version"] >= 1
        assert not (tmp_path / "root" / "data" / "zonefarm.db").exists(), "SQLite was used instead"
    finally:
        _run(["scripts/down.sh"], env, timeout=120)
        pg_cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

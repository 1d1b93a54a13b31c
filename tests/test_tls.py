"""TLS on the API and certificate checks on every client; no code turns a check off.

The server tests run `zonefarm api` (gunicorn) with a certificate issued by a throwaway CA
(trustme) on loopback: a client trusting that CA gets through, one trusting another CA is
refused, and the API will not serve plain HTTP on a non-loopback address unless told to.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from control.core.config import ConfigError, Settings, is_loopback, load_settings
from control.node.agent import register
from control.node.client import Anonymous, ApiClient, TransportError
from control.node.config import load_node_config, write_node_config
from control.node.signing import derive_node_key
from control.provider.agent import load_provider_config
from tests.conftest import NODES_SECRET, ROOT_SECRET
from tests.support.apiproc import ZONEFARM, ApiProcess, api_env, clean_env
from tests.support.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"ZONEFARM_ROOT_SECRET": ROOT_SECRET, "ZONEFARM_NODES_SECRET": NODES_SECRET}

# What switches a TLS or SSH host-key check off. Spelt in pieces, so this file does not match itself.
_OFF = "F" + "alse"
INSECURE = {
    "requests/ssl without verification": re.compile(r"\bverify\s*=\s*" + _OFF + r"\b"),
    "Ansible module without certificate validation": re.compile(
        r"validate_certs\s*[:=]\s*[\"']?(" + _OFF + "|false|no)\\b"),
    "ssl context without certificate check": re.compile(r"CERT_" + "NONE"),
    "hostname check off": re.compile(r"check_hostname\s*=\s*" + _OFF),
    "unverified SSL context": re.compile(r"_create_unverified" + "_context"),
    "curl without verification": re.compile(r"\bcurl\b[^\n]*\s(-k|--insecure)\b"),
    "SSH without host key checking": re.compile(r"StrictHostKeyChecking\s*=?\s*[\"']?no\b", re.I),
    "SSH known_hosts thrown away": re.compile(r"UserKnownHostsFile\s*=?\s*/dev/" + "null"),
    "Ansible without host key checking": re.compile(
        r"host_key_checking[\"']?\s*[:=,]\s*[\"']?(" + _OFF + "|false|no|0)\\b", re.I),
}
SCANNED = {".py", ".yml", ".yaml", ".j2", ".cfg", ".ini", ".sh", ".toml", ".json"}
SKIPPED_DIRS = {".git", ".venv", "collections", "var", "node_modules", "__pycache__", ".ansible", ".ruff_cache"}


def insecure_lines(root: Path) -> list[str]:
    """Every line under ``root`` that disables a TLS or host-key check: ``path:line: what``."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if set(rel.parts[:-1]) & SKIPPED_DIRS or rel.parts[:2] == ("inventory", "lab"):
            continue
        if not path.is_file() or (path.suffix not in SCANNED and path.name not in ("Makefile", "ansible.cfg")):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what, pattern in INSECURE.items():
                if pattern.search(line):
                    found.append(f"{rel}:{number}: {what}: {line.strip()}")
    return found


def test_nothing_turns_a_certificate_or_host_key_check_off() -> None:
    assert insecure_lines(ROOT) == []


@pytest.mark.parametrize("line", [
    "requests.get(url, verify=" + _OFF + ")",
    "    validate_certs: " + "false",
    "ssh_args = -o StrictHostKeyChecking=" + "no",
    "host_key_checking = " + _OFF,
    '"ANSIBLE_HOST_KEY_CHECKING": "' + _OFF + '",',
    "curl -s https://zone1 --" + "insecure",
])
def test_the_scan_finds_a_planted_line(tmp_path: Path, line: str) -> None:
    (tmp_path / "roles" / "x").mkdir(parents=True)
    (tmp_path / "roles" / "x" / "main.yml").write_text(f"ok: 1\n{line}\n")
    assert [f.split(":", 2)[:2] for f in insecure_lines(tmp_path)] == [["roles/x/main.yml", "2"]]


# --- the API's transport rule ----------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "[::1]", "::1"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "10.20.0.11", "zone1.example.org", "[::]", "::"])  # noqa: S104
def test_addresses_other_hosts_reach(host: str) -> None:
    assert not is_loopback(host)


def test_plain_http_on_a_public_address_needs_the_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_plain_http") as refused:
        Settings(listen="0.0.0.0:8700").require_transport()
    assert "tls_cert" in str(refused.value)
    Settings(listen="127.0.0.1:8700").require_transport()  # loopback: the local deployment
    Settings(listen="0.0.0.0:8700", allow_plain_http=True).require_transport()
    assert load_settings(env={"ZONEFARM_ALLOW_PLAIN_HTTP": "true"}).allow_plain_http is True
    with pytest.raises(ConfigError, match="allow_plain_http must be true or false"):
        load_settings(env={"ZONEFARM_ALLOW_PLAIN_HTTP": "maybe"})


def test_certificate_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "zone.crt"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls_cert and tls_key must be set together"):
        Settings(listen="0.0.0.0:8700", tls_cert=str(cert)).require_transport()
    with pytest.raises(ConfigError, match="is not a readable file"):
        Settings(listen="0.0.0.0:8700", tls_cert=str(cert), tls_key=str(tmp_path / "none.key")).require_transport()


def test_api_refuses_to_start_on_all_interfaces_without_tls(tmp_path: Path) -> None:
    env = api_env(tmp_path, **SECRETS, ZONEFARM_LISTEN=f"0.0.0.0:{free_port()}")
    result = subprocess.run([ZONEFARM, "api"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "is not a loopback address and no TLS certificate is set" in result.stderr, result.stderr
    assert "allow_plain_http" in result.stderr and "Traceback" not in result.stderr


# --- HTTPS end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site_ca() -> trustme.CA:
    return trustme.CA(organization_name="zonefarm test site CA")


@pytest.fixture(scope="module")
def https_api(tmp_path_factory: pytest.TempPathFactory, site_ca: trustme.CA) -> Iterator[ApiProcess]:
    """`zonefarm api` serving HTTPS on loopback with a certificate the site CA issued (one per module)."""
    tmp_path = tmp_path_factory.mktemp("https-api")
    cert = site_ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "zone.crt", tmp_path / "zone.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    site_ca.cert_pem.write_to_path(str(ca_file))
    env = api_env(tmp_path, **SECRETS, ZONEFARM_TLS_CERT=str(cert_file), ZONEFARM_TLS_KEY=str(key_file))
    subprocess.run([ZONEFARM, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    port = free_port()
    env["ZONEFARM_LISTEN"] = f"127.0.0.1:{port}"
    server = ApiProcess(["api"], env, tmp_path / "api.log", port, ca_file=str(ca_file))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CA file that did not sign the zone's certificate."""
    path = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    trustme.CA(organization_name="someone else").cert_pem.write_to_path(str(path))
    return str(path)


def _base(api: ApiProcess) -> str:
    return f"https://127.0.0.1:{api.port}"


def test_https_with_the_site_ca(https_api: ApiProcess) -> None:
    assert https_api.url.startswith("https://")
    auth = {"Authorization": f"Bearer {ROOT_SECRET}"}
    resp = requests.get(https_api.url + "/users", headers=auth, timeout=10, verify=https_api.ca_file)
    assert resp.status_code == 200, resp.text
    # the standard library agrees (what library/ modules' open_url builds on)
    context = ssl.create_default_context(cafile=https_api.ca_file)
    with context.wrap_socket(__import__("socket").create_connection(("127.0.0.1", https_api.port), timeout=10),
                             server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_a_client_trusting_another_ca_is_refused(https_api: ApiProcess, other_ca: str) -> None:
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(https_api.url + "/healthz", timeout=10, verify=other_ca)
    with pytest.raises(requests.exceptions.SSLError):  # nor do the system's CAs know the site CA
        requests.get(https_api.url + "/healthz", timeout=10)


def test_plain_http_to_the_https_port_gets_nothing(https_api: ApiProcess) -> None:
    try:
        resp = requests.get(f"http://127.0.0.1:{https_api.port}/api/v1/healthz", timeout=10)
    except requests.ConnectionError:
        return
    assert resp.status_code == 400 and "ok" not in resp.text  # a TLS server's answer, never the API's


# --- every client verifies: the worker side's client, the Ansible modules, the inventory -----

def test_worker_side_client_verifies_against_its_ca_file(https_api: ApiProcess, other_ca: str) -> None:
    with ApiClient(_base(https_api), Anonymous(), 10, ca_file=https_api.ca_file or "") as client:
        assert client.get("/healthz").json()["status"] == "ok"
    for ca_file in (other_ca, ""):  # another CA, and the system's CAs, which do not know the site CA
        with ApiClient(_base(https_api), Anonymous(), 10, ca_file=ca_file) as client, \
                pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get("/healthz")


def test_a_node_registers_over_https_with_ca_file_from_node_ini(https_api: ApiProcess, other_ca: str,
                                                                tmp_path: Path) -> None:
    values = {"name": "tls1", "api_url": _base(https_api), "node_key": derive_node_key(NODES_SECRET, "tls1"),
              "workdir": str(tmp_path / "work"), "ansible_connection": "local"}
    good = write_node_config(tmp_path / "good.ini", **values, ca_file=https_api.ca_file)
    answer = register(load_node_config(good))
    assert answer["name"] == "tls1" and answer["state"] == "online"
    wrong = write_node_config(tmp_path / "wrong.ini", **values, ca_file=other_ca)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        register(load_node_config(wrong))


def test_provider_config_carries_ca_file(https_api: ApiProcess, other_ca: str, tmp_path: Path) -> None:
    token = tmp_path / "provider.token"
    token.write_text("not-checked-by-healthz")
    token.chmod(0o600)
    for ca_file, ok in ((https_api.ca_file, True), (other_ca, False)):
        ini = tmp_path / "provider.ini"
        ini.write_text(f"[provider]\napi_url = {_base(https_api)}\nprovider_id = 1\ntoken_file = {token}\n"
                       f"storage_path = {tmp_path}\nca_file = {ca_file}\n")
        config = load_provider_config(ini)
        assert config.ca_file == ca_file
        with config.client() as client:
            if ok:
                assert client.get("/healthz").status == 200
            else:
                with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                    client.get("/healthz")


def _run_module(name: str, args: dict[str, object]) -> dict[str, object]:
    """Run a library/ module's main() as Ansible would, returning exit_json's or fail_json's result."""
    from unittest import mock

    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args

    from tests.library._kolla import ModuleExit, ModuleFail, _exit, _fail, load_module

    module = load_module(name)
    with patch_module_args(args), mock.patch.object(basic.AnsibleModule, "exit_json", _exit), \
            mock.patch.object(basic.AnsibleModule, "fail_json", _fail):
        try:
            module.main()
        except (ModuleExit, ModuleFail) as done:
            return {"failed": isinstance(done, ModuleFail), **done.result}
    raise AssertionError(f"{name} returned without exit_json or fail_json")


def test_provider_module_verifies_against_ca_file(https_api: ApiProcess, other_ca: str, tmp_path: Path) -> None:
    args = {"api_url": _base(https_api), "api_token": ROOT_SECRET, "name": "tlsprov", "domain": "tls.example.org",
            "admin_email": "ops@example.org", "token_path": str(tmp_path / "provider.token"), "retries": 1}
    done = _run_module("zonefarm_provider", {**args, "ca_file": https_api.ca_file})
    assert not done["failed"] and done["changed"] and done["provider_id"], done
    refused = _run_module("zonefarm_provider", {**args, "ca_file": other_ca})
    assert refused["failed"] and "CERTIFICATE_VERIFY_FAILED" in str(refused["msg"]), refused


def test_callback_module_verifies_against_the_node_ini_ca_file(https_api: ApiProcess, other_ca: str,
                                                               tmp_path: Path) -> None:
    values = {"name": "tls2", "api_url": _base(https_api), "node_key": derive_node_key(NODES_SECRET, "tls2"),
              "workdir": str(tmp_path / "work"), "ansible_connection": "local"}
    config = write_node_config(tmp_path / "node.ini", **values, ca_file=https_api.ca_file)
    register(load_node_config(config))
    args = {"config_path": str(config), "task_id": 999999, "attempt": 1, "event": "started"}
    reached = _run_module("zonefarm_callback", args)
    # through TLS to the API, which has no such task: its answer, not a transport error
    assert reached["failed"] and "HTTP 404" in str(reached["msg"]), reached
    refused = _run_module("zonefarm_callback", {**args, "ca_file": other_ca})
    assert refused["failed"] and "CERTIFICATE_VERIFY_FAILED" in str(refused["msg"]), refused


def test_inventory_script_verifies_against_zonefarm_ca_file(https_api: ApiProcess, other_ca: str) -> None:
    env = {**clean_env(), "ZONEFARM_URL": https_api.url, "ZONEFARM_TOKEN": ROOT_SECRET}
    script = [sys.executable, str(ROOT / "inventory" / "zonefarm.py"), "--list"]
    ok = subprocess.run(script, env={**env, "ZONEFARM_CA_FILE": https_api.ca_file or ""}, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "_meta" in json.loads(ok.stdout)
    refused = subprocess.run(script, env={**env, "ZONEFARM_CA_FILE": other_ca}, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert ROOT_SECRET not in refused.stderr + refused.stdout



def test_user_cli_verifies_against_its_ca_file(https_api: ApiProcess, other_ca: str, tmp_path: Path) -> None:
    """The user's ``zonefarm`` command: the wrong CA is one clear line (no traceback, no token); the right one works."""
    env = {**clean_env(), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "ZONEFARM_URL": _base(https_api), "ZONEFARM_TOKEN": ROOT_SECRET,
           # requests lets this override Session.verify; the CA the user names must win over it
           "REQUESTS_CA_BUNDLE": other_ca}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "control", *args, "node", "ls", "--json"], cwd=ROOT,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)

    for refused in (cli("--ca-file", other_ca), cli()):  # another CA; the environment's bundle
        assert refused.returncode != 0, refused.stdout
        assert f"TLS failure talking to {_base(https_api)}/api/v1/nodes" in refused.stderr, refused.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr and "--ca-file" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert ROOT_SECRET not in refused.stderr + refused.stdout
    for ok in (cli("--ca-file", https_api.ca_file or ""), cli(ZONEFARM_CA_FILE=https_api.ca_file or "")):
        assert ok.returncode == 0, ok.stderr
        assert "items" in json.loads(ok.stdout) or isinstance(json.loads(ok.stdout), list), ok.stdout

# --- the roles: site CA, the zone's certificate, the plain-HTTP refusal ------------------------

def _role_play(tmp_path: Path, **extra: object) -> subprocess.CompletedProcess[str]:
    """The common role's CA tasks and the zone role's TLS tasks against this machine, all in tmp_path."""
    import os

    play = [{"name": "TLS", "hosts": "localhost", "gather_facts": False, "vars": {
        "common_done": True, "common_user": "root", "common_group": "root",
        "common_config_dir": str(tmp_path / "etc"), "common_site_ca_dir": str(tmp_path / "pki"),
        "common_venv": str(Path(sys.executable).parent.parent), "zonefarm_zone_url": "https://zone1.example.org:8700",
        "zone_listen": "0.0.0.0:8700", **extra},
        "tasks": [
            {"name": "Config dir", "ansible.builtin.file": {"path": str(tmp_path / "etc"), "state": "directory",
                                                            "mode": "0750"}},
            {"name": "Site CA", "ansible.builtin.include_role": {"name": "common", "tasks_from": "ca.yml"}},
            {"name": "Zone TLS", "ansible.builtin.include_role": {"name": "zone", "tasks_from": "tls.yml"}}]}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _recap(proc: subprocess.CompletedProcess[str]) -> str:
    return re.search(r"localhost\s+:\s+(ok=.*)", proc.stdout).group(1)  # type: ignore[union-attr]


@pytest.mark.slow
def test_site_ca_issues_the_zone_certificate_once(tmp_path: Path) -> None:
    first = _role_play(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    etc, pki = tmp_path / "etc", tmp_path / "pki"
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "zone.key").stat().st_mode) == 0o600
    assert not (etc / "ca.key").exists()  # the CA key stays on the controller
    assert (etc / "ca.pem").read_bytes() == (pki / "ca.pem").read_bytes()
    cert = x509.load_pem_x509_certificate((etc / "zone.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "zone1.example.org" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    # signed by the CA the hosts get (the TLS handshake against it is test_https_with_the_site_ca's)
    ca = x509.load_pem_x509_certificate((etc / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    second = _role_play(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "changed=0" in _recap(second), second.stdout[-3000:]
    assert (etc / "zone.crt").read_bytes() == cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.slow
def test_role_refuses_plain_http_on_a_public_address(tmp_path: Path) -> None:
    refused = _role_play(tmp_path, zone_tls=False)
    assert refused.returncode != 0
    assert "zone_allow_plain_http" in refused.stdout and "0.0.0.0:8700" in refused.stdout
    assert not (tmp_path / "etc" / "zone.crt").exists()
    assert _role_play(tmp_path, zone_tls=False, zone_listen="127.0.0.1:8700").returncode == 0
    allowed = _role_play(tmp_path, zone_tls=False, zone_allow_plain_http=True)
    assert allowed.returncode == 0, allowed.stdout[-3000:]


@pytest.mark.slow
def test_role_serves_the_operators_certificate(tmp_path: Path, site_ca: trustme.CA) -> None:
    cert = site_ca.issue_cert("zone1.example.org")
    src = tmp_path / "operator"
    src.mkdir()
    cert.cert_chain_pems[0].write_to_path(str(src / "zone.crt"))
    cert.private_key_pem.write_to_path(str(src / "zone.key"))
    site_ca.cert_pem.write_to_path(str(src / "ca.pem"))
    done = _role_play(tmp_path, zone_tls_cert_src=str(src / "zone.crt"), zone_tls_key_src=str(src / "zone.key"),
                      zonefarm_ca_file=str(src / "ca.pem"))
    assert done.returncode == 0, done.stdout[-3000:]
    etc = tmp_path / "etc"
    assert (etc / "zone.crt").read_bytes() == (src / "zone.crt").read_bytes()
    assert stat.S_IMODE((etc / "zone.key").stat().st_mode) == 0o600
    assert (etc / "ca.pem").read_bytes() == (src / "ca.pem").read_bytes()
    assert not (tmp_path / "pki").exists()  # no site CA when the operator brings theirs
    half = _role_play(tmp_path, zone_tls_cert_src=str(src / "zone.crt"), zonefarm_ca_file=str(src / "ca.pem"))
    assert half.returncode != 0 and "zone_tls_cert_src and zone_tls_key_src go together" in half.stdout


# --- the worker and provider roles refuse a zone URL in clear to another host ------------------

PUBLIC_HTTP = "http://zone1.example.org:8700"
CLIENT_CASES: dict[str, dict[str, object]] = {
    "public": {"zonefarm_zone_url": PUBLIC_HTTP},
    "loopback": {"zonefarm_zone_url": "http://127.0.0.1:8700"},
    "localhost": {"zonefarm_zone_url": "http://localhost:8700"},
    "https": {"zonefarm_zone_url": "https://zone1.example.org:8700"},
    "override": {"zonefarm_zone_url": PUBLIC_HTTP, "{role}_allow_plain_http": True},
    "site_override": {"zonefarm_zone_url": PUBLIC_HTTP, "zonefarm_allow_plain_http": True},
}


def _validate_outcomes(role: str, tmp_path: Path) -> dict[str, str]:
    """Run ``roles/<role>/tasks/validate.yml`` once per case (one inventory host each): host -> "" or its failure.

    The role's defaults are each host's variables, with the case's values over them, as an operator's
    inventory would set them; the role's own tasks are not run (they would install things).
    """
    import os

    import yaml

    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    site = {"zonefarm_root_secret": ROOT_SECRET, "zonefarm_nodes_secret": NODES_SECRET, "common_user": "zonefarm",
            "common_group": "zonefarm", "common_config_dir": "/etc/zonefarm", "common_data_dir": "/var/lib/zonefarm",
            "common_venv": "/opt/zonefarm/venv", "common_ca_src": "", "common_ca_file": "",
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {name: {**defaults, **site, **{k.format(role=role): v for k, v in case.items()}}
             for name, case in CLIENT_CASES.items()}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    (tmp_path / "play.yml").write_text(json.dumps([{
        "name": "Validate", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Validate", "ansible.builtin.include_tasks": str(ROOT / "roles" / role / "tasks" /
                                                                          "validate.yml")}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_FORKS": str(len(hosts))}
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i",
                           str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {name: "" for name in hosts}
    for task in json.loads(proc.stdout)["plays"][0]["tasks"]:
        for host, result in task["hosts"].items():
            failed = [r for r in result.get("results", [result]) if r.get("failed")]
            if failed:
                outcomes[host] = str(failed[0].get("msg"))
    return outcomes


@pytest.mark.parametrize("role", ["worker", "provider"])
def test_worker_and_provider_roles_refuse_a_zone_url_in_clear(role: str, tmp_path: Path) -> None:
    outcomes = _validate_outcomes(role, tmp_path)
    refused = outcomes.pop("public")
    assert f"{role}_zone_url {PUBLIC_HTTP} is plain HTTP to another host" in refused, refused
    assert f"{role}_allow_plain_http" in refused, refused
    assert NODES_SECRET not in refused and ROOT_SECRET not in refused
    # loopback, HTTPS, and the explicit override (the role's variable, or the site-wide one) pass
    assert outcomes == {name: "" for name in outcomes}, outcomes

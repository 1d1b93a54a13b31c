"""The lab runs on TLS and checked host keys, as a real site does.

The zone serves HTTPS with a certificate the site CA (made on this machine, the controller)
issued; workers and providers verify it against the CA the roles installed; the dispatchers
check the workers' SSH host keys against the known_hosts the roles wrote from the workers'
own keys. A worker whose host key changes is cordoned, with the reason on it and its task.
A worker's credential taken to another worker cannot act as that one.

Runs after test_lab_deploy on the same session lab (see conftest) and leaves it as it was.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from tests.lab.api import RootApi
from tests.lab.inventory import ca_file
from tests.lab.lab import Lab
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]
ZONEFARM = "/opt/zonefarm/venv/bin/zonefarm"
ETC = "/etc/zonefarm"


Api = RootApi  # the zone's API as root, checked against the lab's site CA


@pytest.fixture(scope="module")
def api(lab: Lab) -> Api:
    if not ca_file(lab).exists():
        pytest.skip("no deploy ran (test_lab_deploy reports why)")
    client = Api(lab)
    try:
        client.call("GET", "/healthz")
    except (AssertionError, requests.RequestException):
        pytest.skip("the zone does not answer (test_lab_deploy reports why)")
    return client


def _sh(lab: Lab, host: str, command: str) -> str:
    code, out = lab.exec(host, command)
    assert code == 0, f"{host}: {command}: {out}"
    return out


def test_the_zone_serves_https_with_the_site_ca(lab: Lab, api: Api, tmp_path: Path) -> None:
    assert api.call("GET", "/healthz")["status"] == "ok"
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(api.base + "/healthz", timeout=10, verify=str(other))
    plain = api.base.replace("https://", "http://")
    try:
        answer = requests.get(plain + "/healthz", timeout=10)
        assert answer.status_code == 400 and "ok" not in answer.text  # the TLS server's complaint, not the API
    except requests.ConnectionError:
        pass
    # the CA's certificate is on every host; its key stayed on the controller
    ca = ca_file(lab).read_text()
    for name in lab.hosts:
        if name == "storage1":  # the NFS host runs no zonefarm client (no common role)
            continue
        assert _sh(lab, name, f"cat {ETC}/ca.pem") == ca, name
        code, out = lab.exec(name, f"ls {ETC}")
        assert "ca.key" not in out.split(), f"{name} holds the CA key"
    assert _sh(lab, "zone1", f"stat -c '%a %U' {ETC}/zone.key").split() == ["600", "zonefarm"]
    # the API itself runs with the certificate: the config says so, and plain HTTP beyond loopback is off
    config = _sh(lab, "zone1", f"cat {ETC}/zonefarm.ini")
    assert f"tls_cert = {ETC}/zone.crt" in config and "allow_plain_http = false" in config


def test_workers_and_providers_verify_the_zone(lab: Lab, api: Api, tmp_path: Path) -> None:
    node_ini = _sh(lab, "wk1", f"cat {ETC}/node.ini")
    assert "api_url = https://zone1:8700" in node_ini and f"ca_file = {ETC}/ca.pem" in node_ini
    provider_ini = _sh(lab, "prov1", f"cat {ETC}/provider.ini")
    assert "api_url = https://zone1:8700" in provider_ini and f"ca_file = {ETC}/ca.pem" in provider_ini
    # a signed heartbeat over HTTPS, checked against the installed CA, as the agent sends it
    beat = _sh(lab, "wk1", f"runuser -u zonefarm -- {ZONEFARM} node heartbeat --config {ETC}/node.ini")
    assert '"online"' in beat
    # the same node trusting another CA gets nowhere
    other = trustme.CA().cert_pem.bytes().decode()
    _sh(lab, "wk1", f"printf '%s' {shlex.quote(other)} > /root/other-ca.pem && "
                    f"sed 's#^ca_file = .*#ca_file = /root/other-ca.pem#' {ETC}/node.ini > /root/wrong-ca.ini && "
                    "chmod 600 /root/wrong-ca.ini")
    code, out = lab.exec("wk1", f"{ZONEFARM} node heartbeat --config /root/wrong-ca.ini")
    assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in out, out
    lab.exec("wk1", "rm -f /root/other-ca.pem /root/wrong-ca.ini")
    # the provider agents follow the change feed over HTTPS
    for name in ("prov1", "prov2"):
        assert _sh(lab, name, "systemctl is-active zonefarm-provider").strip() == "active"
        code, log = lab.exec(name, "journalctl -u zonefarm-provider --no-pager -n 200")
        assert "CERTIFICATE_VERIFY_FAILED" not in log, log


def test_a_workers_credential_cannot_act_as_another_worker(lab: Lab, api: Api) -> None:
    """wk1's node key, copied into wk2's config on wk2, signs as wk2: the zone refuses it."""
    key = next(line.split("=", 1)[1].strip() for line in _sh(lab, "wk1", f"cat {ETC}/node.ini").splitlines()
               if line.startswith("node_key"))
    _sh(lab, "wk2", f"sed 's#^node_key = .*#node_key = {key}#' {ETC}/node.ini > /root/stolen.ini && "
                    "chmod 600 /root/stolen.ini")
    try:
        code, out = lab.exec("wk2", f"{ZONEFARM} node heartbeat --config /root/stolen.ini")
        assert code != 0 and "401" in out, out
        assert key not in out
        # wk2's own key, on the same host, is accepted: the refusal was the key's
        own = _sh(lab, "wk2", f"{ZONEFARM} node heartbeat --config {ETC}/node.ini")
        assert '"online"' in own
    finally:
        lab.exec("wk2", "rm -f /root/stolen.ini")


def _known_hosts_keys(lab: Lab, cm: str) -> dict[str, set[str]]:
    out = _sh(lab, cm, f"cat {ETC}/dispatcher_known_hosts")
    keys: dict[str, set[str]] = {}
    for line in out.splitlines():
        if line.strip() and not line.startswith("#"):
            host, keytype, key = line.split()[:3]
            keys.setdefault(host, set()).add(f"{keytype} {key}")
    return keys


def test_dispatchers_know_each_workers_own_host_keys(lab: Lab, api: Api) -> None:
    for cm in ("cm1", "cm2"):
        assert f"dispatch_known_hosts = {ETC}/dispatcher_known_hosts" in _sh(lab, cm, f"cat {ETC}/dispatcher.ini")
        known = _known_hosts_keys(lab, cm)
        for worker in ("wk1", "wk2", "wk3"):
            real = {" ".join(line.split()[:2]) for line in
                    _sh(lab, worker, "cat /etc/ssh/ssh_host_*_key.pub").splitlines() if line.strip()}
            assert known.get(lab.hosts[worker].ip) == real, (cm, worker, known)


def _node(api: Api, name: str) -> dict[str, Any]:
    return api.call("GET", f"/nodes/{name}")


def test_a_changed_worker_host_key_cordons_it_until_the_operator_acts(lab: Lab, api: Api) -> None:
    """wk2's sshd gets new host keys: the dispatchers refuse it, cordon it and say why on it and on
    its task; with the old keys back and the node uncordoned, the task runs there."""
    _sh(lab, "wk2", "mkdir -p /root/hostkeys && cp -a /etc/ssh/ssh_host_* /root/hostkeys/ && "
                    "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && systemctl restart ssh")
    try:
        task = api.call("POST", "/tasks", {"name": "shell", "params": {"argv": ["hostname"]},
                                           "target": {"node": "wk2"}, "timeout": 120, "max_attempts": 3})
        node = wait_for("wk2 cordoned for its host key", lambda: (n := _node(api, "wk2"))["dispatch_error"] and n,
                        120, every=1)
        assert node["cordoned"] is True
        assert node["dispatch_error"].startswith(
            f"SSH host key of node wk2 ({lab.hosts['wk2'].ip}:22) has changed: it does not match the dispatcher's "
            f"known_hosts ({ETC}/dispatcher_known_hosts)"), node["dispatch_error"]
        events = api.call("GET", f"/tasks/{task['id']}/events")
        back = [e for e in events if e["from_state"] == "assigned"]
        assert back and back[-1]["to_state"] == "queued", events
        assert back[-1]["reason"] == f"launch failed on node wk2: {node['dispatch_error']}"
        time.sleep(5)
        assert api.call("GET", f"/tasks/{task['id']}")["state"] == "queued"  # it waits; no attempts burnt
    finally:
        lab.exec("wk2", "rm -f /etc/ssh/ssh_host_* && cp -a /root/hostkeys/ssh_host_* /etc/ssh/ && "
                        "rm -rf /root/hostkeys && systemctl restart ssh")
    api.call("POST", "/nodes/wk2/uncordon")
    done = wait_for("the task to run on wk2", lambda: (t := api.call("GET", f"/tasks/{task['id']}"))["state"]
                    in ("succeeded", "failed", "timed_out") and t, 120, every=1)
    assert done["state"] == "succeeded" and done["node"] == "wk2", done
    wait_for("wk2's reason cleared", lambda: _node(api, "wk2")["dispatch_error"] == "", 60, every=1)

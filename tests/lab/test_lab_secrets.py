"""No credential in any lab host's journal or log directory, after everything the lab ran.

Last of the lab session (conftest's order): by then the deploy, the end-to-end tests, the
sandbox and the faults have sent thousands of signed requests and logged every service's
start, stop and error. journald is where an operator's log shipper reads from, so a secret
there has left the host. The check runs on each host and reports only which secret (by its
number) matched, so the secrets never cross into the test report.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from control.node.signing import derive_node_key
from tests.lab.inventory import lab_secrets
from tests.lab.lab import HOSTS, Lab
from tests.lab.test_lab_faults import Api, api  # noqa: F401  (the deployed platform, deployed on demand)

pytestmark = pytest.mark.lab

PATTERNS = "/root/zf-leak-patterns"
# The journal and the log files, written once to a scratch file so each secret costs one grep.
SCAN = ("journalctl --no-pager -o cat > /root/zf-leak-scan; "
        "cat /var/log/zonefarm/* /var/log/syslog 2>/dev/null >> /root/zf-leak-scan; "
        "wc -c < /root/zf-leak-scan; n=0; while IFS= read -r p; do n=$((n+1)); "
        "grep -qF -- \"$p\" /root/zf-leak-scan && echo \"hit $n\"; done < " + PATTERNS + "; "
        "rm -f /root/zf-leak-scan " + PATTERNS)


def _file(name: str, text: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def test_no_host_journal_or_log_holds_a_secret(lab: Lab, api: Api) -> None:  # noqa: F811
    plain = lab_secrets(lab)
    creds = {"root secret": plain["root_secret"], "nodes secret": plain["nodes_secret"],
             "database password": plain["database_password"]}
    creds.update({f"{name}'s node key": derive_node_key(plain["nodes_secret"], name)
                  for name, groups in HOSTS.items() if "worker" in groups})
    names = list(creds)
    found: list[str] = []
    for host in lab.hosts:
        assert lab.hosts[host].container.put_archive("/root", _file("zf-leak-patterns",
                                                                     "".join(v + "\n" for v in creds.values())))
        code, out = lab.exec(host, SCAN)
        lines = out.split()
        assert code == 0 and lines and int(lines[0]) > 0, f"{host}: nothing to scan ({out[-300:]})"
        found += [f"{names[int(n) - 1]} in {host}'s journal or logs" for word, n in zip(lines, lines[1:], strict=False)
                  if word == "hit"]
    assert found == [], "secrets leaked: " + "; ".join(found)

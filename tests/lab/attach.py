"""Attach to a lab kept running by hand, so a lab test module can be iterated on without a redeploy.

    ZONEFARM_LAB_ATTACH=<run id>:<workdir> .venv/bin/pytest tests/lab/test_lab_e2e.py

The `lab` fixture then uses that lab and leaves it running; the lab's owner removes it by run id
(`tests.lab.lab.remove(run_id)`). Never used in CI: the variable is unset there.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.lab.lab import HOSTS, LABEL, PREFIX, Host, Lab

ENV = "ZONEFARM_LAB_ATTACH"


def attached(image: str) -> Lab | None:
    """The lab named by ZONEFARM_LAB_ATTACH, or None when it is unset."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    run_id, _, workdir = spec.partition(":")
    lab = Lab(image, Path(workdir), run_id=run_id)
    lab.network = lab.client.networks.get(lab.network_name)
    for container in lab.client.containers.list(all=True, filters={"label": f"{LABEL}={run_id}"}):
        name = container.name.removeprefix(f"{PREFIX}-{run_id}-")
        ip = container.attrs["NetworkSettings"]["Networks"].get(lab.network_name, {}).get("IPAddress", "")
        lab.hosts[name] = Host(name, HOSTS[name], container, ip)
    if not lab.hosts:
        raise LookupError(f"{ENV}: no containers labelled {LABEL}={run_id}")
    return lab

"""Make sure a Docker engine answers: install docker.io if missing, start dockerd if idle.

This machine's PID 1 is not systemd, so dockerd is started in the background by hand
and left running for the rest of the session (other suites reuse it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SOCKET = "/var/run/docker.sock"
LOG = Path("/var/log/zonefarm-dockerd.log")


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["flock", "/tmp/zonefarm-apt.lock", "sh", "-c",
                    "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                    + " ".join(packages)], check=True, env=env)


def _ping() -> bool:
    if not os.path.exists(SOCKET):
        return False
    try:
        import docker
        client = docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def ensure_docker(timeout: float = 60) -> None:
    """Return once the engine answers; raise with the daemon's log tail if it never does."""
    if _ping():
        return
    if shutil.which("dockerd") is None:
        _apt_install("docker.io")
    with open("/tmp/zonefarm-dockerd.lock", "w") as lock:
        import fcntl
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping():
            return
        log = open(LOG, "ab")
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if _ping():
                return
            time.sleep(0.5)
    tail = LOG.read_text(errors="replace")[-2000:] if LOG.exists() else ""
    raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{tail}")

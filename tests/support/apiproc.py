"""``zonefarm api`` as operators run it (the console script, gunicorn) in a subprocess of a test.

The in-process ``live_server`` fixture cannot be killed with -9, restarted on the same port,
or show the JSON access log and the secret checks; the server and crash tests need all of
that, so they start the real command here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.procs import stop_group

ZONEFARM = str(Path(sys.executable).with_name("zonefarm"))


def clean_env() -> dict[str, str]:
    """This process's environment without ``ZONEFARM_*``: a subprocess gets only the settings a test gives it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ZONEFARM_")}


def api_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Settings for ``zonefarm`` commands: a data dir and SQLite database under ``tmp_path``, a small pool.

    ``settings`` (``ZONEFARM_*`` names) override or add to these.
    """
    env = clean_env()
    env.update({
        "ZONEFARM_DATA_DIR": str(tmp_path / "data"),
        "ZONEFARM_DATABASE": f"sqlite:///{tmp_path / 'data' / 'zonefarm.db'}",
        # small pool: the machine is shared and these tests need no parallelism
        "ZONEFARM_API_WORKERS": "1",
        "ZONEFARM_API_THREADS": "4",
        "ZONEFARM_LOG_LEVEL": "INFO",
        **settings,
    })
    return env


class ApiProcess:
    """One ``zonefarm api`` subprocess in its own session, with its combined stdout/stderr in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, port: int,
                 ca_file: str | None = None) -> None:
        self.port = port
        # With ca_file the server serves HTTPS (ZONEFARM_TLS_CERT) and is checked against that CA.
        self.ca_file = ca_file
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}/api/v1"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([ZONEFARM, *args], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"zonefarm api exited {self.proc.returncode}:\n{self.output()}")
            try:  # the socket is bound before the workers have imported the app: allow slow boots
                if requests.get(self.url + "/healthz", timeout=5, verify=self.ca_file or True).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise AssertionError(f"zonefarm api not healthy within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        """The JSON access log; a line a kill -9 cut short is not JSON and is skipped."""
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def kill(self) -> None:
        """SIGKILL to the whole process group (gunicorn's master and workers): they die mid-request."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        stop_group(self.proc, grace=20)
        self._log.close()
        return self.proc.returncode

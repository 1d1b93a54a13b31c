"""A throwaway PostgreSQL cluster: initdb + pg_ctl in a temp dir, on a loopback port.

PostgreSQL refuses to run as root, so as root the cluster is owned by and run as the
``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindir() -> str:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(cand, "pg_ctl")):
            return cand
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("PostgreSQL server binaries not found; run `make deps` (Debian package postgresql)")


class PgCluster:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="zf-pg-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self.user = "zonefarm"
        self.password = "zonefarm-test-pw"
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        argv = list(cmd)
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def start(self) -> PgCluster:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        self._run(f"{self.bindir}/initdb", "-D", str(self.datadir), "-U", self.user,
                  f"--pwfile={pwfile}", "-A", "scram-sha-256", "-E", "UTF8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
                f"-c unix_socket_directories={self.root}")
        self._run(f"{self.bindir}/pg_ctl", "-D", str(self.datadir), "-o", opts, "-l",
                  str(self.root / "log"), "-w", "-t", "60", "start")
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                password=self.password, dbname=dbname)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            self._run(f"{self.bindir}/pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def wait_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")

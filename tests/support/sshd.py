"""A private sshd for upload tests: own host key, authorized keys, SFTP, optionally chrooted."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.pg import free_port


class Sshd:
    """A private sshd on a free loopback port: own host key, one authorized key, SFTP.

    With ``chroot`` the account is confined as the provider role confines its upload account:
    ``ChrootDirectory`` at the storage, ``internal-sftp`` only, starting at its root.
    """

    def __init__(self, base: Path, chroot: Path | None = None, match: str = "",
                 authorized: list[str] | None = None) -> None:
        self.base = base
        base.mkdir(parents=True)
        self.port = free_port()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "client_key")], check=True)
        keys = [(base / "client_key.pub").read_text().strip(), *(authorized or [])]
        (base / "authorized_keys").write_text("\n".join(keys) + "\n")
        host_pub = (base / "host_key.pub").read_text().split()
        (base / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (base / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
            f"PidFile {base / 'sshd.pid'}\nAuthorizedKeysFile {base / 'authorized_keys'}\nStrictModes no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nUsePAM no\nSubsystem sftp internal-sftp\n"
            + (f"Match User root\n    ChrootDirectory {chroot}\n    ForceCommand internal-sftp -d /\n"
               if chroot else "") + match)
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(base / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(base / "sshd.log", "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)



"""Attack: an upload landing outside the task's own space.

Before the sandbox the task got ``ZONEFARM_SSH_KEY`` (and could read the key as the
agent's account), and the providers' upload account was not chrooted: a pipeline task of
space A could write into space B, or anywhere the account could reach on the provider.
Now the task never sees the key (the runner uploads after it ended), an output must be a
file inside the task's own directory (a symlink out is refused), the worker writes under
``<space>/task-<id>/`` only, and the provider role's sshd drop-in (rendered here from
``roles/provider/templates/sftp.conf.j2``) chroots the account to the storage root.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
from pathlib import Path

import paramiko
import pytest

from control.node.tasktypes.pipeline import remote_path
from tests.support.secfarm import SecFarm, role_dropin, support_spaces
from tests.support.sshd import Sshd

pytestmark = pytest.mark.slow
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the farm: worker side


@SQLITE
def test_a_task_cannot_upload_outside_its_space(farm: SecFarm, provider_sshd: Sshd,
                                                storage: tuple[Path, Path]) -> None:
    root, spaces = storage
    space_a, space_b = support_spaces(farm, provider_sshd, spaces, ("space-a", "space-b"))
    key = farm.config_dir("wk1") / "upload_ed25519"
    # the task tries the node's upload key (from its environment, else from its path) to write into space B
    steal = (f'echo evil > evil.txt; K="${{ZONEFARM_SSH_KEY:-{key}}}"; echo "ENV:${{ZONEFARM_SSH_KEY:-none}}"; '
             'echo "KEY:$(cat "$K" >/dev/null 2>&1 && echo readable || echo denied)"; '
             f'printf "put evil.txt {space_b}/evil.txt\\nput evil.txt /evil.txt\\n" | sftp -b - -i "$K" '
             f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={provider_sshd.base / 'known_hosts'} "
             "-o BatchMode=yes "
             f'-P {provider_sshd.port} root@127.0.0.1; echo "UPLOAD:$?"; echo ok > result.txt')
    task = farm.submit("pipeline", {"generate": [["sh", "-c", steal]], "outputs": ["result.txt"]}, space=space_a)
    leak = farm.submit("pipeline", {"generate": [["sh", "-c", "ln -s /etc leak; echo x > x.txt"]],
                                    "outputs": ["x.txt", "leak/hostname"]}, space=space_a, max_attempts=1)
    farm.start_dispatcher("d1")
    done = farm.wait(task["id"], timeout=90)
    assert done["state"] == "succeeded", farm.log(task["id"])
    log = farm.log(task["id"])
    assert "ENV:none" in log and "KEY:denied" in log and "UPLOAD:0" not in log, log
    assert [u["remote"] for u in done["outputs"]["uploaded"]] == [f"{space_a}/task-{task['id']}/result.txt"]
    assert (spaces / str(space_a) / f"task-{task['id']}" / "result.txt").read_text() == "ok\n"
    leaked = farm.wait(leak["id"], timeout=90)
    assert leaked["state"] == "failed" and "outside the task directory" in farm.log(leak["id"])
    landed = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert landed == [f"spaces/{space_a}/task-{task['id']}/result.txt"], landed


@SQLITE
def test_the_upload_account_is_chrooted_to_the_storage(provider_sshd: Sshd, storage: tuple[Path, Path],
                                                       farm: SecFarm) -> None:
    """Even the node's own key (a compromised worker) reaches nothing on the provider but its storage."""
    root, spaces = storage
    probe = Path("/etc") / f"zonefarm-chroot-probe-{os.getpid()}"
    client = paramiko.SSHClient()
    client.load_host_keys(str(provider_sshd.base / "known_hosts"))
    client.connect("127.0.0.1", port=provider_sshd.port, username="root", allow_agent=False, look_for_keys=False,
                   key_filename=str(farm.config_dir("wk1") / "upload_ed25519"), timeout=20)
    sftp = client.open_sftp()
    try:
        assert sftp.getcwd() in ("/spaces", None) or sftp.normalize(".") == "/spaces"
        for target in (str(probe), "../../../../etc/" + probe.name, "/../" + probe.name):
            try:
                with sftp.open(target, "w") as fh:
                    fh.write("x")
            except OSError:
                pass
        assert set(sftp.listdir("/")) <= {"spaces", probe.name}  # the whole of the host it can see
    finally:
        sftp.close()
        client.close()
    assert not probe.exists()  # whatever it wrote landed in the chroot (root here; zfupload may not even that)
    assert {p.name for p in root.iterdir()} <= {"spaces", probe.name}


def test_remote_paths_stay_in_the_space() -> None:
    assert remote_path(7, 12, "out/a.txt") == "7/task-12/out/a.txt"
    for bad in ("../../8/x", "../task-13/x", "/etc/passwd"):
        with pytest.raises(ValueError, match="would land outside space 7's 7/task-12/"):
            remote_path(7, 12, bad)
    assert posixpath.normpath(remote_path(7, 12, "a/../b")) == "7/task-12/b"


def test_sshd_accepts_the_role_dropin(storage: tuple[Path, Path], tmp_path: Path) -> None:
    root, spaces = storage
    conf = tmp_path / "sshd_config"
    conf.write_text(f"HostKey {tmp_path / 'hk'}\nSubsystem sftp internal-sftp\n"
                    + role_dropin("zfupload", root, spaces))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True)
    checked = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "ChrootDirectory " + str(root) in conf.read_text()

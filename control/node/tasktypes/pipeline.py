"""The ``pipeline`` task type: Zimfarm's prepare -> generate -> upload.

Upload copies each output over SFTP (paramiko) to the provider storage named in the
batch entry's ``upload``, authenticated by the node's SSH key (``ZONEFARM_SSH_KEY``).
Each file goes to a temporary name and is renamed when complete, so a reader on the
provider never sees half a file; a failed transfer is retried a bounded number of times.
Host keys come from ``ZONEFARM_KNOWN_HOSTS`` (the node config's ``known_hosts``) or the
system's known_hosts; an unknown host key is refused.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paramiko

from control.node.tasktypes import load_spec, say, write_outputs

UPLOAD_ATTEMPTS = 3
UPLOAD_BACKOFF = 1.0


def _stage(name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    say(f"stage {name}: {' '.join(argv)}")
    try:
        return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as exc:
        say(f"stage {name} cannot start: {exc}")
        return 127


def _outputs(tdir: Path, names: list[str]) -> list[Path]:
    root = tdir.resolve()
    paths = []
    for name in names:
        path = (tdir / name).resolve()
        if root not in path.parents:
            raise ValueError(f"output {name!r} is outside the task directory")
        if not path.is_file():
            raise FileNotFoundError(f"output {name!r} was not produced")
        paths.append(path)
    return paths


def _connect(upload: dict[str, Any]) -> paramiko.SFTPClient:
    client = paramiko.SSHClient()
    known = os.environ.get("ZONEFARM_KNOWN_HOSTS")
    if known:
        client.load_host_keys(known)
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # an unknown provider gets no data
    key = os.environ.get("ZONEFARM_SSH_KEY") or None
    client.connect(upload["sftp_host"], port=int(upload.get("sftp_port") or 22),
                   username=upload.get("sftp_user") or None, key_filename=key,
                   look_for_keys=key is None, allow_agent=False, timeout=20)
    sftp = client.open_sftp()
    sftp.sshclient = client  # closed with it
    return sftp


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = []
    while path not in ("", "/"):
        parts.append(path)
        path = posixpath.dirname(path)
    for part in reversed(parts):
        try:
            sftp.stat(part)
        except OSError:
            sftp.mkdir(part)


def _upload_once(upload: dict[str, Any], files: list[tuple[Path, str]], attempt: int) -> None:
    sftp = _connect(upload)
    try:
        for local, remote in files:
            _makedirs(sftp, posixpath.dirname(remote))
            tmp = posixpath.join(posixpath.dirname(remote), f".{posixpath.basename(remote)}.part{attempt}")
            sftp.put(str(local), tmp, confirm=True)
            sftp.posix_rename(tmp, remote)
            say(f"uploaded {local.name} -> {upload['sftp_host']}:{remote}")
    finally:
        sftp.close()
        sftp.sshclient.close()


def upload_outputs(spec: dict[str, Any], tdir: Path, paths: list[Path]) -> list[dict[str, Any]]:
    upload = spec.get("upload")
    if not upload:
        raise RuntimeError("no provider storage to upload to (does a provider support the task's space?)")
    base = posixpath.join(upload["storage_path"], f"task-{spec['id']}")
    files = [(p, posixpath.join(base, p.relative_to(tdir.resolve()).as_posix())) for p in paths]
    delay = UPLOAD_BACKOFF
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            _upload_once(upload, files, attempt)
            return [{"path": p.relative_to(tdir.resolve()).as_posix(), "remote": r, "size": p.stat().st_size}
                    for p, r in files]
        except (OSError, paramiko.SSHException) as exc:
            say(f"upload attempt {attempt}/{UPLOAD_ATTEMPTS} failed: {type(exc).__name__}: {exc}")
            if attempt == UPLOAD_ATTEMPTS:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def main() -> int:
    tdir, spec = load_spec()
    params = spec["params"]
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (params.get("env") or {}).items()})
    for stage in ("prepare", "generate"):
        for argv in params.get(stage) or []:  # each stage is a list of commands (argv lists)
            code = _stage(stage, [str(a) for a in argv], tdir, env)
            if code:
                say(f"stage {stage} failed with exit code {code}")
                return code
    say("stage upload")
    try:
        uploaded = upload_outputs(spec, tdir, _outputs(tdir, list(params.get("outputs") or [])))
    except (OSError, ValueError, RuntimeError, paramiko.SSHException) as exc:
        say(f"upload failed: {exc}")
        write_outputs(tdir, {"uploaded": [], "error": str(exc)})
        return 75
    write_outputs(tdir, {"uploaded": uploaded})
    return 0


if __name__ == "__main__":
    sys.exit(main())

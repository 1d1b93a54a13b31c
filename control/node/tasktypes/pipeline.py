"""The ``pipeline`` task type: Zimfarm's prepare -> generate -> upload.

The stages are the user's commands: the sandbox runs them (each an argv, in order, in the
task's own directory, as the task's identity; the launch module turns ``prepare`` and
``generate`` into its steps). Upload is ours: ``python -m control.node.tasktypes.pipeline
upload``, the runner's ``after`` step, runs in the node agent's account once the stages ended
well and the task's processes are gone, with the upload key the task never sees.

Upload copies each declared output over SFTP (paramiko) to the provider storage named in
the batch entry's ``upload``, authenticated by the node's upload key (``ZONEFARM_SSH_KEY``,
given to this program only). Paths are relative to the SFTP account's root, which the
provider role chroots to its storage directory: every file goes to
``<space id>/task-<id>/<output>``, and nothing outside ``<space id>/`` is ever written (an
output is a regular path inside the task's directory, a symlink leaving it is refused).
Each file goes to a temporary name and is renamed when complete, so a reader on the
provider never sees half a file; a failed transfer is retried a bounded number of times.
Before the first byte it checks the room: the outputs' total size plus the space's use (as
the zone last measured it, in ``upload``) must fit in the support's size, and the provider's
agent must not have marked the space over quota (an ``.over-quota`` file in the space's
directory, read over SFTP). A refusal fails the task at once, naming the space, the
provider, the size and the use; it is not retried (the next attempt would be refused too).
Each file that lands is reported at once with a request signed by the node (its INI file is
``ZONEFARM_NODE_CONFIG``, readable by this program only, as the runner's account): name, size
and SHA-256, which ``GET /tasks/{id}/files`` lists. A report the zone refuses fails the upload.
Host keys come from ``ZONEFARM_KNOWN_HOSTS`` (the node config's ``known_hosts``) or the
system's known_hosts; an unknown host key is refused.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any

from control.node.tasktypes import load_spec, say, write_failure, write_outputs

OVER_QUOTA = ".over-quota"  # the provider agent's marker (control.provider.agent)
UPLOAD_ATTEMPTS = 3
UPLOAD_BACKOFF = 1.0
EXIT_UPLOAD_FAILED = 75


def outputs_in(tdir: Path, names: list[str]) -> list[Path]:
    """The declared outputs, each a regular file inside the task's directory (symlinks resolved)."""
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


def remote_path(space_id: int, task_id: int, relative: str) -> str:
    """Where an output lands, relative to the SFTP start directory: always in the task's own directory of its space."""
    space = str(int(space_id))
    own = f"{space}/task-{int(task_id)}/"
    target = posixpath.normpath(posixpath.join(own, relative))
    if not target.startswith(own):
        raise ValueError(f"output {relative!r} would land outside space {space}'s {own}")
    return target


class QuotaRefused(RuntimeError):
    """The space has no room for these outputs on this provider: fail now, never retry."""


def check_room(upload: dict[str, Any], total: int) -> None:
    """Refuse outputs that would take the space past its size on the chosen provider."""
    size = upload.get("size")
    if size is None:
        return
    used = int(upload.get("used") or 0)
    if used + total > int(size):
        raise QuotaRefused(f"space {upload.get('space') or upload['space_id']} on provider {upload.get('provider')} "
                           f"has a size of {size} bytes and uses {used}: these outputs ({total} bytes) would "
                           f"make {used + total}, {used + total - int(size)} over")


def check_marker(sftp: Any, upload: dict[str, Any]) -> None:
    """The provider's agent found the space over quota since the zone's last numbers."""
    try:
        sftp.stat(f"{int(upload['space_id'])}/{OVER_QUOTA}")
    except OSError:
        return
    raise QuotaRefused(f"space {upload.get('space') or upload['space_id']} is over quota on provider "
                       f"{upload.get('provider')} (size {upload.get('size')} bytes, used {upload.get('used')} "
                       "when last measured): its agent refuses uploads until it is back under")


def _connect(upload: dict[str, Any]) -> Any:
    import paramiko

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


def _makedirs(sftp: Any, path: str) -> None:
    parts = []
    while path not in ("", "/", "."):
        parts.append(path)
        path = posixpath.dirname(path)
    for part in reversed(parts):
        try:
            sftp.stat(part)
        except OSError:
            sftp.mkdir(part)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Reporter:
    """Tells the zone each file that landed (``POST /tasks/{id}/files``, signed as the node)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from control.node.client import node_client
        from control.node.config import load_node_config

        path = os.environ.get("ZONEFARM_NODE_CONFIG")
        self.client = node_client(load_node_config(path)) if path else None
        self.route = f"/tasks/{int(spec['id'])}/files"
        self.attempt = int(spec.get("attempt") or 1)

    def landed(self, name: str, size: int, sha256: str) -> None:
        if self.client is None:
            return  # run by hand, outside a node: nothing to report to
        from control.node.client import TransportError

        body = {"attempt": self.attempt, "name": name, "size": size, "sha256": sha256}
        for delay in (1.0, 2.0, 4.0, None):
            try:
                resp = self.client.post(self.route, body)
            except TransportError as exc:
                if delay is None:
                    raise RuntimeError(f"could not record {name} with the zone: {exc}") from None
                time.sleep(delay)
                continue
            if resp.status != 200:
                raise RuntimeError(f"the zone refused the record of {name} ({resp.status}): {resp.error_message()}")
            return


def part_name(remote: str, attempt: int) -> str:
    """Where try ``attempt`` writes ``remote`` until it is whole (hidden, next to it)."""
    return posixpath.join(posixpath.dirname(remote), f".{posixpath.basename(remote)}.part{attempt}")


def _drop_earlier_parts(sftp: Any, remote: str, attempt: int) -> None:
    """The partial files of this run's earlier tries (a connection cut mid-file): the whole file is
    in place now, so they are only bytes counted against the space. A killed run's parts are
    overwritten by the next run's tries of the same number."""
    for earlier in range(1, attempt):
        try:
            sftp.remove(part_name(remote, earlier))
        except OSError:
            pass  # that try had not begun this file


def _upload_once(upload: dict[str, Any], files: list[tuple[Path, str, str]], attempt: int,
                 reporter: Reporter, root: Path) -> None:
    sftp = _connect(upload)
    try:
        check_marker(sftp, upload)
        for local, remote, digest in files:
            _makedirs(sftp, posixpath.dirname(remote))
            tmp = part_name(remote, attempt)
            sftp.put(str(local), tmp, confirm=True)
            sftp.posix_rename(tmp, remote)
            _drop_earlier_parts(sftp, remote, attempt)
            say(f"uploaded {local.name} -> {upload['sftp_host']}:{remote}")
            reporter.landed(local.relative_to(root).as_posix(), local.stat().st_size, digest)
    finally:
        _close_quietly(sftp)


def _close_quietly(sftp: Any) -> None:
    """Closing a session whose connection was cut raises EOFError; it is closed either way."""
    try:
        sftp.close()
    except (OSError, EOFError):
        pass
    sftp.sshclient.close()


def upload_outputs(spec: dict[str, Any], tdir: Path, paths: list[Path]) -> list[dict[str, Any]]:
    import paramiko

    upload = spec.get("upload")
    if not upload or not upload.get("space_id"):
        raise RuntimeError("no provider storage to upload to (does a provider support the task's space?)")
    root = tdir.resolve()
    check_room(upload, sum(p.stat().st_size for p in paths))
    files = [(p, remote_path(upload["space_id"], spec["id"], p.relative_to(root).as_posix()), sha256_of(p))
             for p in paths]
    reporter = Reporter(spec)
    delay = UPLOAD_BACKOFF
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            _upload_once(upload, files, attempt, reporter, root)
            return [{"path": p.relative_to(root).as_posix(), "remote": r, "size": p.stat().st_size, "sha256": d}
                    for p, r, d in files]
        except (OSError, EOFError, paramiko.SSHException) as exc:  # EOFError: paramiko's "connection cut"
            say(f"upload attempt {attempt}/{UPLOAD_ATTEMPTS} failed: {type(exc).__name__}: {exc}")
            if attempt == UPLOAD_ATTEMPTS:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _failed(attempt_dir: Path, reason: str) -> int:
    say(reason)
    write_outputs(attempt_dir, {"uploaded": [], "error": reason})
    write_failure(attempt_dir, reason)
    return EXIT_UPLOAD_FAILED


def upload() -> int:
    """The ``after`` step: upload the task's declared outputs from its (handed back) directory."""
    import paramiko

    attempt_dir, spec = load_spec()
    tdir = Path(os.environ["ZONEFARM_TASK_DIR"])
    say("stage upload")
    try:
        uploaded = upload_outputs(spec, tdir, outputs_in(tdir, list(spec["params"].get("outputs") or [])))
    except QuotaRefused as exc:
        return _failed(attempt_dir, f"upload refused over quota: {exc}")
    except (OSError, EOFError, ValueError, RuntimeError, paramiko.SSHException) as exc:
        return _failed(attempt_dir, f"upload failed: {str(exc) or type(exc).__name__}")
    write_outputs(attempt_dir, {"uploaded": uploaded})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["upload"]:
        print("usage: python -m control.node.tasktypes.pipeline upload", file=sys.stderr)
        return 2
    return upload()


if __name__ == "__main__":
    sys.exit(main())

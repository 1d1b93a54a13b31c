"""The ``transfer`` task type's program: provider to provider over SFTP, checked, with counters.

Run as the runner's ``after`` step on a provider host (a node serving the ``transfer`` queue),
in the runner's account, with the node's upload key (``ZONEFARM_SSH_KEY``) and known_hosts,
which both providers' upload accounts authorize (the roles exchange them as for uploads). The
batch entry's ``upload`` holds the transfer (``control.farm.transfers.plan``): its kind, the
space, the path in it, and the source and target endpoints (SFTP host, port, account, and
the target support's size and use).

1. List the path under ``<space id>/`` on the source (regular files only: symlinks are not
   followed, the agent's markers and upload temporaries are skipped) and report the totals.
2. ``replicate`` / ``migrate``: refuse before a byte is copied when the target has no room
   (its use plus these bytes past its size, or its agent's ``.over-quota`` marker). Each file
   is streamed source -> target under a temporary name while hashed, then the target's copy
   is read back and must have the same size and SHA-256 before it is renamed to its name;
   ``WORKERS`` files at a time, each worker on SFTP channels of its own.
   ``migrate`` then removes the source's files, only once every file is on the target.
3. ``evict``: every file must be on the target with the same size and SHA-256 before any is
   removed from the source; otherwise nothing is removed (the last replica is kept).

Counters go to the zone with requests signed by the node (``POST /transfers/{id}/progress``),
every 8 MiB, at most once a second for files done, and at the end. A refusal fails the task at once with its reason.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
import threading
import time
from typing import Any

from control.node.tasktypes import load_spec, say, write_failure, write_outputs
from control.node.tasktypes.pipeline import (
    OVER_QUOTA,
    _close_quietly,
    _connect,
    _drop_earlier_parts,
    _makedirs,
    part_name,
)

BLOCK = 1 << 20
REPORT_EVERY = 8 << 20  # bytes between two counter reports within a file
REPORT_SECONDS = 1.0  # at most this often for files done
WORKERS = 4  # files copied at once
SKIP = (OVER_QUOTA, ".revoked")
EXIT_FAILED = 75


class Refused(RuntimeError):
    """The transfer may not go on (no room, the last replica): fail now, never retry."""


class Counters:
    """The transfer's counters, reported with the node's signed requests."""

    def __init__(self, spec: dict[str, Any], transfer_id: int) -> None:
        import os

        from control.node.client import node_client
        from control.node.config import load_node_config

        path = os.environ.get("ZONEFARM_NODE_CONFIG")
        self.client = node_client(load_node_config(path)) if path else None
        self.route = f"/transfers/{int(transfer_id)}/progress"
        self.attempt = int(spec.get("attempt") or 1)
        self.values = {"bytes_total": 0, "files_total": 0, "bytes_done": 0, "files_done": 0}
        self.sent_at = 0
        self.sent_time = 0.0
        self.lock = threading.RLock()  # the copying workers share the counters

    def report(self) -> None:
        with self.lock:
            self.sent_at = self.values["bytes_done"]
            self.sent_time = time.monotonic()
            if self.client is None:
                return
            resp = self.client.post(self.route, {"attempt": self.attempt, **self.values})
        if resp.status != 200:
            raise RuntimeError(f"the zone refused the transfer's counters ({resp.status}): {resp.error_message()}")

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.values["bytes_done"] += nbytes
            due = self.values["bytes_done"] - self.sent_at >= REPORT_EVERY
        if due:
            self.report()

    def file_done(self) -> None:
        """One more file; reported at most once a second (a tree of small files is not a request each)."""
        with self.lock:
            self.values["files_done"] += 1
            due = time.monotonic() - self.sent_time >= REPORT_SECONDS
        if due:
            self.report()


def listing(sftp: Any, root: str) -> list[tuple[str, int]]:
    """(path, size) of each regular file at or under ``root`` (a file or a directory). No symlink is
    followed, not even one standing for a directory on the way to ``root`` (it could lead into
    another space's directory): then there is nothing to list."""
    parts = root.split("/")
    for depth in range(1, len(parts)):
        if not stat.S_ISDIR(sftp.lstat("/".join(parts[:depth])).st_mode or 0):
            return []
    top = sftp.lstat(root)
    if stat.S_ISREG(top.st_mode or 0):
        return [(root, int(top.st_size or 0))]
    if not stat.S_ISDIR(top.st_mode or 0):
        return []
    found: list[tuple[str, int]] = []
    pending = [root]
    while pending:
        current = pending.pop()
        for entry in sorted(sftp.listdir_attr(current), key=lambda e: e.filename):
            name = entry.filename
            if name in SKIP or (name.startswith(".") and ".part" in name):
                continue
            path = posixpath.join(current, name)
            if stat.S_ISDIR(entry.st_mode or 0):
                pending.append(path)
            elif stat.S_ISREG(entry.st_mode or 0):
                found.append((path, int(entry.st_size or 0)))
    return sorted(found)


def sha256_remote(sftp: Any, path: str, size: int) -> tuple[int, str]:
    """The bytes a remote file holds and their SHA-256, read back over SFTP."""
    digest = hashlib.sha256()
    count = 0
    with sftp.open(path, "rb") as fh:
        fh.prefetch(size)
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
            count += len(block)
    return count, digest.hexdigest()


def replicate(source: Any, target: Any, files: list[tuple[str, int]], counters: Counters) -> None:
    """Copy the files, WORKERS at a time, each worker with SFTP channels of its own on the two
    connections (a tree of small files is round trips, not bytes); the directories first."""
    import paramiko

    for parent in sorted({posixpath.dirname(p) for p, _ in files}):
        _makedirs(target, parent)
    queue = list(reversed(files))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        src = paramiko.SFTPClient.from_transport(source.sshclient.get_transport())
        dst = paramiko.SFTPClient.from_transport(target.sshclient.get_transport())
        try:
            while not failures:
                with lock:
                    if not queue:
                        return
                    path, size = queue.pop()
                copy_one(src, dst, path, size, counters)
                counters.file_done()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            failures.append(exc)
        finally:
            src.close()
            dst.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(WORKERS, len(files)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def check_room(plan: dict[str, Any], target: Any, total: int) -> None:
    t = plan["target"]
    space = int(plan["space_id"])
    try:
        target.stat(f"{space}/{OVER_QUOTA}")
    except OSError:
        pass
    else:
        raise Refused(f"space {plan.get('space')} is over quota on provider {t['provider']}: its agent refuses "
                      "writes until it is back under")
    if int(t["used"]) + total > int(t["size"]):
        raise Refused(f"provider {t['provider']} has no room for these {total} bytes: space {plan.get('space')} "
                      f"has a size of {t['size']} bytes there and uses {t['used']}")


def copy_one(source: Any, target: Any, path: str, size: int, counters: Counters) -> str:
    """Stream one file to the target's temporary name, check it there, rename it; its SHA-256."""
    tmp = part_name(path, counters.attempt)
    digest = hashlib.sha256()
    with source.open(path, "rb") as fin, target.open(tmp, "wb") as fout:
        fin.prefetch(size)
        fout.set_pipelined(True)
        for block in iter(lambda: fin.read(BLOCK), b""):
            digest.update(block)
            fout.write(block)
            counters.add(len(block))
    landed, there = sha256_remote(target, tmp, size)
    if landed != size or there != digest.hexdigest():
        target.remove(tmp)
        raise OSError(f"{path}: the copy on the target differs from the source ({landed} of {size} bytes)")
    target.posix_rename(tmp, path)
    _drop_earlier_parts(target, path, counters.attempt)  # an earlier attempt cut mid-file
    return digest.hexdigest()


def remove_all(sftp: Any, root: str, files: list[tuple[str, int]]) -> None:
    """Remove the files, then the directories under ``root`` (and ``root``) they leave empty."""
    dirs: set[str] = set()
    for path, _ in files:
        sftp.remove(path)
        parent = posixpath.dirname(path)
        while parent and (parent == root or parent.startswith(root + "/")):
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    for path in sorted(dirs, key=lambda d: -d.count("/")):  # deepest first
        try:
            sftp.rmdir(path)
        except OSError:
            pass  # not empty: something the transfer did not move is still there


def run(plan: dict[str, Any], counters: Counters) -> dict[str, Any]:
    space = str(int(plan["space_id"]))
    root = posixpath.normpath(posixpath.join(space, plan.get("path") or ""))
    if root != space and not root.startswith(space + "/"):
        raise Refused(f"path {plan.get('path')!r} leaves space {space}")
    if [plan["source"].get(k) for k in ("sftp_host", "sftp_port")] == \
            [plan["target"].get(k) for k in ("sftp_host", "sftp_port")]:
        raise Refused("the source and the target are the same SFTP server: its own file is no replica")
    source, target = _connect(plan["source"]), _connect(plan["target"])
    try:
        try:
            files = listing(source, root)
        except FileNotFoundError:
            raise Refused(f"{plan.get('path') or '(the space)'} is not on provider {plan['source']['provider']}") \
                from None
        total = sum(size for _, size in files)
        counters.values.update(bytes_total=total, files_total=len(files))
        counters.report()
        say(f"{plan['kind']}: {len(files)} files, {total} bytes, {plan['source']['provider']} -> "
            f"{plan['target']['provider']}")
        if plan["kind"] == "evict":
            for path, size in files:
                try:
                    there = target.stat(path).st_size
                except OSError:
                    there = None
                if there != size or sha256_remote(target, path, size) != sha256_remote(source, path, size):
                    raise Refused(f"evict refused: {path} has no identical replica on provider "
                                  f"{plan['target']['provider']}; the last replica is never removed")
                counters.add(size)
                counters.file_done()
            remove_all(source, root, files)
            say(f"evicted {len(files)} files from {plan['source']['provider']}")
        else:
            check_room(plan, target, total)
            replicate(source, target, files, counters)
            if plan["kind"] == "migrate":
                remove_all(source, root, files)
                say(f"removed {len(files)} files from {plan['source']['provider']}")
        counters.report()
        return {"files": len(files), "bytes": total}
    finally:
        _close_quietly(source)
        _close_quietly(target)


def main() -> int:
    import paramiko

    attempt_dir, spec = load_spec()
    plan = spec.get("upload") or {}
    if not plan.get("transfer"):
        write_failure(attempt_dir, "no transfer in this task's batch entry")
        return EXIT_FAILED
    counters = Counters(spec, plan["transfer"])
    started = time.monotonic()
    try:
        done = run(plan, counters)
    except Refused as exc:
        say(str(exc))
        write_failure(attempt_dir, str(exc))
        return EXIT_FAILED
    except (OSError, EOFError, RuntimeError, paramiko.SSHException) as exc:
        reason = f"transfer failed: {str(exc) or type(exc).__name__}"
        say(reason)
        write_failure(attempt_dir, reason)
        return 1
    seconds = time.monotonic() - started
    say(f"done: {done['files']} files, {done['bytes']} bytes in {seconds:.2f} s")
    write_outputs(attempt_dir, {**done, "seconds": seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


"""Reading a task's landed output through the API: streamed from its provider over SFTP.

The file is the zone's own record (``TaskFile``, written by the node's signed report as the
upload landed): the user's ``name`` only selects that row, so nothing a caller sends ever
becomes a path. The path read is ``<space id>/<row's path>`` relative to the provider's SFTP
start directory, which the provider role chroots to its storage (the upload account's view,
the same one the node wrote with); a recorded path that would leave its task's directory is
refused again here, whatever the database says.

The API connects with its own key (``storage_ssh_key``) and checks the host key against
``storage_known_hosts``; an unknown host gets no request. The file's size on the provider must
be the recorded size, else the answer is 409 (the file changed since it landed), so the ETag,
the recorded SHA-256, never names other bytes than the record's.

Ranges follow RFC 9110: one ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` gives 206 with
``Content-Range``; a range starting past the end is 416 with ``Content-Range: bytes */size``;
a header this does not serve (several ranges, another unit, bad syntax) is ignored and the
whole file is sent, as the RFC allows.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from control.core.config import Settings
from control.core.errors import ApiError, conflict, not_found
from control.farm.models import TaskFile
from control.farm.taskfiles import space_path
from control.registry.models import Provider

WINDOW = 1 << 22  # bytes asked at once (pipelined SFTP reads, paramiko's readv): what a slow client can hold up
MAX_NAME = 1024  # FileLanded.name's bound
_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")


@dataclass(frozen=True)
class Span:
    """The bytes to send: ``start`` to ``end`` inclusive; ``partial`` when a Range chose them."""

    start: int
    end: int
    partial: bool

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def unsatisfiable(size: int) -> ApiError:
    return ApiError(416, f"range not satisfiable: the file has {size} bytes", code="range_not_satisfiable",
                    headers={"Content-Range": f"bytes */{size}"})


def span(header: str | None, size: int) -> Span:
    """The bytes a ``Range`` header asks for, or the whole file when it asks for nothing this serves."""
    whole = Span(0, size - 1, False)
    m = _RANGE.fullmatch((header or "").strip())
    if m is None or (m[1] == "" and m[2] == ""):
        return whole
    if m[1] == "":  # suffix: the last n bytes
        last = int(m[2])
        if last == 0 or size == 0:
            raise unsatisfiable(size)
        return Span(max(0, size - last), size - 1, True)
    start = int(m[1])
    if m[2] and int(m[2]) < start:
        return whole  # an invalid range spec: the header is ignored (RFC 9110 14.2)
    if start >= size:
        raise unsatisfiable(size)
    return Span(start, min(int(m[2]) if m[2] else size - 1, size - 1), True)


def landed(task_id: int, name: str) -> TaskFile:
    """The recorded output ``name`` of the task (an exact name, as listed), or 404."""
    row = None
    if "\x00" not in name and len(name) <= MAX_NAME:  # no landed name holds either (PostgreSQL refuses NUL)
        row = TaskFile.get_or_none(TaskFile.task == task_id, TaskFile.name == name)
    if row is None:
        raise not_found("file", repr(name)[:200])
    return row


def remote_path(row: TaskFile) -> str:
    """Where the file is under the provider's SFTP root, checked to stay in its task's directory."""
    inside = space_path(row.task_id, row.name)
    if inside != row.path:
        raise conflict(f"file {row.name!r}: recorded path {row.path!r} is not its task's {inside!r}")
    return posixpath.join(str(int(row.space_id)), inside)


def connect(settings: Settings, provider: Provider) -> Any:
    """An SFTP session on the provider's storage, as the API (its key, its known_hosts only)."""
    import paramiko

    client = paramiko.SSHClient()
    if settings.storage_known_hosts:
        client.load_host_keys(settings.storage_known_hosts)
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = settings.storage_ssh_key or None
    try:
        client.connect(provider.sftp_host, port=int(provider.sftp_port or 22), username=provider.sftp_user or None,
                       key_filename=key, look_for_keys=key is None, allow_agent=False, timeout=20)
        sftp = client.open_sftp()
    except (OSError, paramiko.SSHException) as exc:
        client.close()
        raise ApiError(503, f"provider {provider.name}'s storage is unreachable: {type(exc).__name__}") from None
    sftp.sshclient = client
    return sftp


@dataclass
class Download:
    """An open file on the provider and what to send of it; ``chunks`` closes the session."""

    row: TaskFile
    span: Span
    sftp: Any
    handle: Any

    def headers(self) -> dict[str, str]:
        out = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
               "ETag": f'"{self.row.sha256}"', "Content-Length": str(self.span.length),
               "Content-Disposition": "attachment; filename*=UTF-8''"
               + re.sub(r"[^A-Za-z0-9._-]", lambda m: "".join(f"%{b:02X}" for b in m[0].encode()),
                        posixpath.basename(self.row.name))}
        if self.span.partial:
            out["Content-Range"] = f"bytes {self.span.start}-{self.span.end}/{self.row.size}"
        return out

    def chunks(self) -> Iterator[bytes]:
        """The span's bytes, a window of pipelined reads at a time (memory stays bounded by WINDOW)."""
        try:
            for offset in range(self.span.start, self.span.end + 1, WINDOW):
                n = min(WINDOW, self.span.end + 1 - offset)
                yield from self.handle.readv([(offset, n)])
        finally:
            self.close()

    def close(self) -> None:
        self.handle.close()
        self.sftp.close()
        self.sftp.sshclient.close()


def open_download(settings: Settings, row: TaskFile, range_header: str | None) -> Download:
    """Open the landed file on its provider, checked against its record, ready to stream."""
    provider = Provider.get_or_none(Provider.id == row.provider_id)
    if provider is None or not provider.sftp_host:
        raise conflict(f"file {row.name!r}: provider {row.provider_name} no longer serves SFTP storage")
    path = remote_path(row)
    want = span(range_header, row.size)  # before connecting: a 416 needs no provider
    sftp = connect(settings, provider)
    try:
        try:
            handle = sftp.open(path, "rb")
        except OSError:
            raise ApiError(410, f"file {row.name!r} is no longer on provider {provider.name}") from None
        if handle.stat().st_size != row.size:
            handle.close()
            raise conflict(f"file {row.name!r} on provider {provider.name} is not the {row.size} bytes recorded "
                           "when it landed")
    except BaseException:
        sftp.close()
        sftp.sshclient.close()
        raise
    return Download(row, want, sftp, handle)

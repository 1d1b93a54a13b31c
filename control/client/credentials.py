"""The client's stored login: ``$XDG_CONFIG_HOME/zonefarm/credentials`` (default ``~/.config``).

An INI file with a ``[zonefarm]`` section: ``url``, ``token`` (the access token),
``refresh_token``, ``expires_at`` (epoch seconds), ``username`` and ``ca_file``. The
section and the ``url``/``token`` keys are the ones the Ansible dynamic inventory
(``inventory/zonefarm.py``) reads, so ``ZONEFARM_INVENTORY_INI`` can point at this file.

The file holds bearer credentials, so it is written mode 0600 in a 0700 directory, and a
file others can read is refused rather than used: its token may already be someone
else's. Writes go to a temporary file renamed over the old one, so a crash never leaves
half a token behind. A refresh token is single use, so two commands refreshing at once
would lock each other out; ``refresh_lock`` serialises them.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from control.node.secretfile import read_section

SECTION = "zonefarm"


class CredentialsError(Exception):
    """The file exists but cannot be trusted or read."""


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    username: str | None = None
    ca_file: str | None = None


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path(env.get("HOME") or Path.home()) / ".config"
    return root / "zonefarm"


def path(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "credentials"


def load(env: Mapping[str, str] | None = None) -> Credentials | None:
    """The stored login, or None when there is none."""
    p = path(env)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"{p}: cannot open ({exc.strerror}); a symlink is not followed") from None
    with os.fdopen(fd, encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialsError(f"{p}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise CredentialsError(f"{p}: mode {mode:04o} lets others read the token; "
                                   f"chmod 600 it, or log in again")
        if st.st_uid != os.getuid():
            raise CredentialsError(f"{p}: owned by uid {st.st_uid}, not by this user")
        values = dict(read_section(p, SECTION, CredentialsError, fh=fh))
    if not values.get("url") or not values.get("token"):
        raise CredentialsError(f"{p}: url and token are required")
    try:
        expires_at = float(values["expires_at"]) if values.get("expires_at") else None
    except ValueError:
        raise CredentialsError(f"{p}: expires_at is not a number") from None
    return Credentials(url=values["url"], token=values["token"],
                       refresh_token=values.get("refresh_token") or None, expires_at=expires_at,
                       username=values.get("username") or None, ca_file=values.get("ca_file") or None)


def _private_dir(env: Mapping[str, str] | None) -> Path:
    d = config_dir(env)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def save(creds: Credentials, env: Mapping[str, str] | None = None) -> Path:
    """Write the login atomically, mode 0600."""
    d = _private_dir(env)
    parser = configparser.ConfigParser(interpolation=None)
    parser[SECTION] = {k: v for k, v in (
        ("url", creds.url), ("token", creds.token), ("refresh_token", creds.refresh_token or ""),
        ("expires_at", f"{creds.expires_at:.0f}" if creds.expires_at is not None else ""),
        ("username", creds.username or ""), ("ca_file", creds.ca_file or "")) if v}
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".credentials.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            parser.write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / "credentials")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return d / "credentials"


def delete(env: Mapping[str, str] | None = None) -> bool:
    try:
        path(env).unlink()
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def refresh_lock(env: Mapping[str, str] | None = None) -> Iterator[None]:
    """An exclusive lock beside the file, held while a refresh token is spent and the result saved."""
    d = _private_dir(env)
    fd = os.open(d / "credentials.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

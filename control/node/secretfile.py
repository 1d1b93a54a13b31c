"""The one check that a file holding a credential is private to its owner, and the one
reader of the INI files that hold credentials.

Standard library only, and shared the way ``signing.py`` is: the node config
(``control.node.config``), the provider agent's config and token file, the user client's
stored login (``control.client.credentials``), the Ansible module
``library/zonefarm_callback.py`` (through ``module_utils/zonefarm_secretfile.py``, a
symlink to this file) and the dynamic inventory script (which loads this file by path)
all refuse a credential file that its group or others may read, with the same message,
and read their INI section with the same parser and the same errors.
A secret others could have read is refused rather than used: it may already be copied.
A file that does not parse is named with the parser's reason and line number, never with
the line's text, which may be a secret.
"""

from __future__ import annotations

import configparser
import os
import stat
from typing import TextIO


class InsecureFileError(ValueError):
    """A credential file others may read (or write)."""


def require_private(path: str | os.PathLike[str], what: str) -> None:
    """Raise ``InsecureFileError`` unless ``path`` is mode 0600 or stricter.

    ``what`` names the credential in the message ("the node key", "the provider
    token"). A missing file raises ``FileNotFoundError``, for the caller to word.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise InsecureFileError(f"{path}: mode {mode:04o} lets others read {what}; chmod 600 it")


def private_file(path: str | os.PathLike[str], what: str, error: type[Exception]) -> None:
    """``require_private`` with both of its failures (missing, readable by others) raised
    as the caller's own ``error``, which is what each program reports and exits on."""
    try:
        require_private(path, what)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except InsecureFileError as exc:
        raise error(str(exc)) from None


def _reason(exc: configparser.Error) -> str:
    """The parser's complaint without the offending line: its first line names the problem
    (and an option or section name at most), the rest would quote the file."""
    lineno = getattr(exc, "lineno", None)
    if lineno is None and isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno = exc.errors[0][0]
    where = f" (line {lineno})" if lineno is not None else ""
    return str(exc).splitlines()[0] + where


def read_section(path: str | os.PathLike[str], section: str, error: type[Exception], *,
                 what: str | None = None, fh: TextIO | None = None) -> configparser.SectionProxy:
    """The ``[section]`` of an INI file, every failure raised as the caller's ``error``.

    ``what`` (the credential it holds, e.g. "the node key") first requires the file to be
    private (``private_file``). ``fh`` is the file already opened (and checked) by the
    caller; else ``path`` is opened here. No interpolation, so a ``%`` in a secret is
    data. A missing section is an error too: each file has the one section its program reads.
    """
    if what is not None:
        private_file(path, what, error)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if fh is not None:
            parser.read_file(fh, source=str(path))
        else:
            with open(path, encoding="utf-8") as opened:
                parser.read_file(opened)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a valid INI file: not UTF-8 text") from None
    except configparser.Error as exc:
        raise error(f"{path}: not a valid INI file: {_reason(exc)}") from None
    if not parser.has_section(section):
        raise error(f"{path}: missing [{section}] section")
    return parser[section]

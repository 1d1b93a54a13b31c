"""The one check that a file holding a credential is private to its owner.

Standard library only, and shared the way ``signing.py`` is: the node config
(``control.node.config``), the provider agent's token file, the Ansible module
``library/zonefarm_callback.py`` (through ``module_utils/zonefarm_secretfile.py``, a
symlink to this file) and the dynamic inventory script (which loads this file by path)
all refuse a credential file that its group or others may read, with the same message.
A secret others could have read is refused rather than used: it may already be copied.
"""

from __future__ import annotations

import os
import stat


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

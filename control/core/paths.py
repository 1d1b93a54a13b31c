"""Where the Ansible side (playbooks/, library/, module_utils/) lives.

In a checkout it is the repository root; a deployed host installs the package into a
venv and the playbooks beside it, and points ``ZONEFARM_SHARE_DIR`` there.
"""

from __future__ import annotations

import os
from pathlib import Path

# Resolved once: resolving on each call cost a realpath() per task-type lookup (a batch makes thousands).
_CHECKOUT = Path(__file__).resolve().parents[2]


def share_dir() -> Path:
    env = os.environ.get("ZONEFARM_SHARE_DIR")
    return Path(env) if env else _CHECKOUT

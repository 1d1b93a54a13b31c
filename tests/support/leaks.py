"""The secret-leak check: no credential in any file a service or a task wrote.

Logs are read by more people than credentials are: operators paste them into tickets, log
shippers copy them off the host. A secret found there is a leak even when the file is 0600.
The failure names the secret and the file, never the secret's value (the test report is a log
too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

MAX_BYTES = 64 * 1024 * 1024  # a log this big is itself a finding; read no more of it


def files_under(*roots: Path) -> list[Path]:
    """Every regular file below ``roots`` (the roots themselves may be files)."""
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())
    return found


def leaks(texts: Mapping[str, bytes], secrets: Mapping[str, str]) -> list[str]:
    """``"<secret name> in <where>"`` for each secret found in each text; empty when clean."""
    wanted = {name: value.encode() for name, value in secrets.items() if value}
    assert all(len(v) >= 16 for v in wanted.values()), "a short secret would match by chance"
    return [f"{name} in {where}" for where, data in texts.items()
            for name, value in wanted.items() if value in data]


def assert_no_secrets(paths: Iterable[Path], secrets: Mapping[str, str], *,
                      extra: Mapping[str, str | bytes] | None = None) -> int:
    """Fail naming each (secret, file) pair found; returns how many files were read, so a
    caller can assert the check saw what it meant to (a grep over nothing passes)."""
    texts: dict[str, bytes] = {}
    for path in paths:
        with open(path, "rb") as handle:
            texts[str(path)] = handle.read(MAX_BYTES)
    for where, value in (extra or {}).items():
        texts[where] = value.encode() if isinstance(value, str) else value
    found = leaks(texts, secrets)
    assert found == [], "secrets leaked: " + "; ".join(found)
    return len(texts)

"""Password hashing with argon2id (argon2-cffi), at RFC 9106's second recommended cost.

The cost is argon2-cffi's ``RFC_9106_LOW_MEMORY`` profile: 64 MiB, 3 passes, 4 lanes
(above OWASP's floor of 19 MiB and 2 passes). A hash stored with other parameters (an
older release's 19 MiB, 2 passes) is re-hashed at the user's next successful login,
the only moment the plaintext is at hand (``needs_rehash``).

At 64 MiB each, hashing is bounded per process (``HASH_SLOTS`` at once): a burst of logins
waits its turn instead of taking a gigabyte. The login throttle (``control.registry.throttle``)
refuses repeated failures before any hash is computed.

Tests only: ``ZONEFARM_TEST_PASSWORD_HASH=cheap`` in the environment selects argon2-cffi's
``CHEAPEST`` profile, so the suite's hundreds of logins stay fast. It is not a setting and
nothing but ``tests/conftest.py`` sets it; servers the tests start as ``zonefarm api``
subprocesses run without it, at the real cost.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PROFILE = profiles.RFC_9106_LOW_MEMORY
TEST_ENV = "ZONEFARM_TEST_PASSWORD_HASH"
HASH_SLOTS = 2
_slots = threading.BoundedSemaphore(HASH_SLOTS)


@functools.cache
def _hasher() -> PasswordHasher:
    if os.environ.get(TEST_ENV) == "cheap":
        logging.getLogger("zonefarm.passwords").warning(
            "%s=cheap: password hashes are NOT safe (tests only)", TEST_ENV)
        return PasswordHasher.from_parameters(profiles.CHEAPEST)
    return PasswordHasher.from_parameters(PROFILE)


@functools.cache
def _dummy() -> str:
    return hash_password("zonefarm-dummy-password")


def hash_password(password: str) -> str:
    with _slots:
        return _hasher().hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Always spends one verification, so unknown users cost as much as known ones."""
    target = stored or _dummy()
    try:
        with _slots:
            return _hasher().verify(target, password) and bool(stored)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether a hash that just verified was made with other parameters than today's."""
    try:
        return _hasher().check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True

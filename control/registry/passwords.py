"""Password hashing with argon2id (argon2-cffi), at OWASP's minimum cost.

The cost is kept at the OWASP floor (19 MiB, 2 passes) because the token endpoint
runs on two-core hosts; raise it with the hardware.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_DUMMY = _hasher.hash("zonefarm-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Always spends one verification, so unknown users cost as much as known ones."""
    try:
        return _hasher.verify(stored or _DUMMY, password) and bool(stored)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False

"""Users and their SSH public keys; every write appends its change to the feed.

The feed shows a user's record to the user itself, to the readers of its spaces and
groups, and to providers whose region holds it, never its e-mail or password hash.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import conflict, invalid, not_found
from control.core.models import now
from control.registry import feed, members
from control.registry.models import SshKey, User
from control.registry.passwords import hash_password
from control.registry.sshkeys import parse_key


def get(user_id: int) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise not_found("user", user_id)
    return user


def _feed_data(user: User) -> dict[str, Any]:
    return {"username": user.username, "full_name": user.full_name, "active": user.active}


def create(username: str, password: str, full_name: str, email: str, active: bool) -> User:
    if User.select().where(User.username == username).exists():
        raise conflict(f"username {username!r} is taken")
    user = User.create(username=username, full_name=full_name, email=email, active=active,
                       password_hash=hash_password(password))
    feed.record("user", user.id, "create", _feed_data(user), user_id=user.id)
    return user


def update(user: User, changes: dict[str, Any]) -> None:
    """Apply the fields given (null leaves one as is). A new password is set before this by
    ``identity.change_password``, which checks the current one and revokes other tokens."""
    for field in ("full_name", "email", "active"):
        if changes.get(field) is not None:
            setattr(user, field, changes[field])
    user.updated_at = now()
    user.save()
    feed.record("user", user.id, "update", _feed_data(user), user_id=user.id)


def delete(user: User) -> None:
    members.record_departures(user.id)
    feed.record("user", user.id, "delete", {"username": user.username}, user_id=user.id)
    user.delete_instance(recursive=True, delete_nullable=True)


def add_key(user: User, name: str, key: str) -> SshKey:
    try:
        _, line, fingerprint, _ = parse_key(key)
    except ValueError as exc:
        raise invalid(f"key: {exc}") from None
    if SshKey.select().where(SshKey.user == user, SshKey.fingerprint == fingerprint).exists():
        raise conflict(f"key {fingerprint} is already registered for this user")
    row = SshKey.create(user=user, name=name, key=line, fingerprint=fingerprint)
    feed.record("user_key", row.id, "create", {"fingerprint": fingerprint}, user_id=user.id)
    return row


def delete_key(user: User, fingerprint: str) -> None:
    key = SshKey.get_or_none(SshKey.user == user, SshKey.fingerprint == fingerprint.lower())
    if key is None:
        raise not_found("key", fingerprint)
    feed.record("user_key", key.id, "delete", {"fingerprint": key.fingerprint}, user_id=user.id)
    key.delete_instance()

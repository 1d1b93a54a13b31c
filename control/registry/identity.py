"""Who is calling: the root secret, a user token or a provider token (Bearer).

Tokens are random strings stored only as SHA-256 digests; the lookup is by digest,
and the root secret is compared in constant time. Invite and support tokens are made
and found the same way (``new_secret``, ``find_secret``): one scheme for every secret.
A user token has a scope: ``write`` (everything the user may do) or ``read`` (any write is
refused, see ``control.web.routing``). Refresh tokens are not bearer credentials: each is
exchanged once for a new access token and a new refresh token (``redeem_refresh``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

import peewee

from control.core.db import write_transaction
from control.core.errors import ApiError, forbidden, invalid, too_many, unauthorized
from control.core.models import now
from control.registry import throttle
from control.registry.models import Provider, Token, User
from control.registry.passwords import hash_password, verify_password

# ``last_used_at`` is written at most once a minute per token: a write on every request
# would make every read queue for SQLite's write lock.
LAST_USED_EVERY = 60.0


@dataclass(frozen=True)
class Principal:
    kind: str  # "root" | "user" | "provider" | "node"
    user: User | None = None
    provider: Provider | None = None
    node: str | None = None
    token_id: int | None = None
    read_only: bool = False

    @property
    def is_root(self) -> bool:
        return self.kind == "root"

    def describe(self) -> str:
        if self.user is not None:
            return f"user:{self.user.id}"
        if self.provider is not None:
            return f"provider:{self.provider.id}"
        if self.node is not None:
            return f"node:{self.node}"
        return self.kind


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret(kind: str) -> tuple[str, str]:
    """A fresh secret and its digest. The plaintext goes to the caller once and is never
    stored; its prefix (``zfu_``, ``zfp_``, ``zfi_``, ``zfs_``) tells what it is for."""
    plain = f"zf{kind[0]}_" + secrets.token_urlsafe(32)
    return plain, digest(plain)


SECRET_TTL = 7 * 86400  # invites and support tokens, unless the issuer asks otherwise


def secret_lifetime(expires_in: int | None, max_ttl: int) -> int:
    """Seconds a new invite or support token lives: 7 days (or the maximum when shorter)."""
    if expires_in is None:
        return min(SECRET_TTL, max_ttl)
    if expires_in > max_ttl:
        raise invalid(f"expires_in: at most {max_ttl} seconds (the invite_max_ttl setting)")
    return expires_in


def gone(message: str) -> ApiError:
    """A token that existed but can no longer be used: 410, so a client tells it from a typo."""
    return ApiError(410, message, "gone")


def find_secret(model: type[peewee.Model], plain: str) -> peewee.Model | None:
    """The row holding this secret's digest (an indexed lookup; no plaintext is stored)."""
    return model.get_or_none(model.token_hash == digest(plain))


def new_token(kind: str, *, user: User | None = None, provider: Provider | None = None,
              ttl: int | None = None, scope: str = "write") -> tuple[str, Token]:
    """Create a token; the plaintext is returned once and never stored."""
    plain, hashed = new_secret(kind)
    row = Token.create(token_hash=hashed, kind=kind, user=user, provider=provider,
                       expires_at=(now() + ttl) if ttl else None, scope=scope)
    return plain, row


def revoke_tokens(*, token_id: int | None = None, provider: Provider | None = None) -> None:
    """Revoke one token by id, or every token of a provider (its rotation)."""
    query = Token.update(revoked=True)
    if token_id is not None:
        query = query.where(Token.id == token_id)
    elif provider is not None:
        query = query.where(Token.provider == provider.id, Token.kind == "provider")
    else:
        raise ValueError("revoke_tokens needs a token id or a provider")
    query.execute()


def issue_user_tokens(user: User, *, scope: str, ttl: int, refresh_ttl: int | None) -> tuple[str, str | None]:
    """An access token and the refresh token that replaces it, both with ``scope``; no refresh
    token when ``refresh_ttl`` is None (a client that could never revoke one asks for none)."""
    access, _ = new_token("user", user=user, ttl=ttl, scope=scope)
    if refresh_ttl is None:
        return access, None
    refresh, _ = new_token("refresh", user=user, ttl=refresh_ttl, scope=scope)
    return access, refresh


def redeem_refresh(plain: str) -> Token:
    """Spend a refresh token: it works once. Returns its row (with the user) for the new pair.

    The spend is one conditional UPDATE, so two requests racing with the same token cannot
    both win, on SQLite or PostgreSQL.
    """
    row = (Token.select(Token, User).join(User)
           .where(Token.token_hash == digest(plain), Token.kind == "refresh").first())
    if row is None or row.revoked or (row.expires_at is not None and row.expires_at < now()):
        raise unauthorized("invalid, used or expired refresh token")
    spent = Token.update(revoked=True).where(Token.id == row.id, Token.revoked == False).execute()  # noqa: E712
    if not spent:
        raise unauthorized("invalid, used or expired refresh token")
    if not row.user.active:
        raise unauthorized("user is not active")
    return row


def revoke_user_tokens(user_id: int, *, keep: int | None = None) -> int:
    """Revoke every access and refresh token of a user but ``keep``; returns how many."""
    query = Token.update(revoked=True).where(Token.user == user_id, Token.revoked == False)  # noqa: E712
    if keep is not None:
        query = query.where(Token.id != keep)
    return query.execute()


def change_password(principal: Principal, user: User, new: str, current: str | None, *,
                    max_failures: int, window: float) -> ApiError | None:
    """Set a new password: the user must give its current one (root need not), and every
    other token of the user is revoked, so a stolen token does not outlive the change.

    Returns the refusal instead of raising it: a wrong current password is recorded against
    the username's login throttle, and that record must commit.
    """
    if not principal.is_root:
        if not current:
            return forbidden("current_password: required to change the password")
        limits = [throttle.Limit(throttle.user_key(user.username), max_failures)]
        wait = throttle.retry_after(limits, window)
        if wait is not None:
            return too_many("too many failed password checks for this user; try again later", wait)
        if not verify_password(user.password_hash, current):
            throttle.record_failure(limits, window)
            return forbidden("current_password does not match")
    user.password_hash = hash_password(new)
    revoke_user_tokens(user.id, keep=principal.token_id if principal.user is not None else None)
    return None


def _touch(row: Token) -> None:
    t = now()
    if row.last_used_at is not None and t - row.last_used_at < LAST_USED_EVERY:
        return
    try:
        with write_transaction():
            Token.update(last_used_at=t).where(Token.id == row.id).execute()
    except peewee.OperationalError as exc:  # advisory: never fail a request for it
        logging.getLogger("zonefarm.api").warning("token last-used time not saved: %s", exc)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(header: str | None, root_secret: str) -> Principal:
    token = bearer(header)
    if token is None:
        raise unauthorized("missing bearer token")
    if root_secret and hmac.compare_digest(token.encode(), root_secret.encode()):
        return Principal("root")
    # One query for the token and its owner: every authenticated request pays for this.
    row = (Token.select(Token, User, Provider)
           .join_from(Token, User, peewee.JOIN.LEFT_OUTER)
           .join_from(Token, Provider, peewee.JOIN.LEFT_OUTER)
           .where(Token.token_hash == digest(token)).first())
    if row is None or row.revoked:
        raise unauthorized("invalid or revoked token")
    if row.expires_at is not None and row.expires_at < now():
        raise unauthorized("token expired")
    if row.kind == "user":
        user = row.user
        if not user.active:
            raise unauthorized("user is not active")
        _touch(row)
        return Principal("user", user=user, token_id=row.id, read_only=row.scope == "read")
    if row.kind == "provider":
        _touch(row)
        return Principal("provider", provider=row.provider, token_id=row.id,
                         read_only=row.scope == "read")
    if row.kind == "root":  # issued for the root secret by POST /auth/root-token
        return Principal("root", token_id=row.id)
    raise unauthorized("invalid token")


def require_root(principal: Principal) -> None:
    if not principal.is_root:
        raise forbidden("only the administrator may do this")


def require_user_or_root(principal: Principal) -> None:
    if principal.kind not in ("root", "user"):
        raise forbidden(f"a {principal.kind} token may not do this")

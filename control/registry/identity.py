"""Who is calling: the root secret, a user token or a provider token (Bearer).

Tokens are random strings stored only as SHA-256 digests; the lookup is by digest,
and the root secret is compared in constant time. Invite and support tokens are made
and found the same way (``new_secret``, ``find_secret``): one scheme for every secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import peewee

from control.core.errors import ApiError, forbidden, invalid, unauthorized
from control.core.models import now
from control.registry.models import Provider, Token, User


@dataclass(frozen=True)
class Principal:
    kind: str  # "root" | "user" | "provider" | "node"
    user: User | None = None
    provider: Provider | None = None
    node: str | None = None
    token_id: int | None = None

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
              ttl: int | None = None) -> tuple[str, Token]:
    """Create a token; the plaintext is returned once and never stored."""
    plain, hashed = new_secret(kind)
    row = Token.create(token_hash=hashed, kind=kind, user=user, provider=provider,
                       expires_at=(now() + ttl) if ttl else None)
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
        return Principal("user", user=user, token_id=row.id)
    if row.kind == "provider":
        return Principal("provider", provider=row.provider, token_id=row.id)
    if row.kind == "root":  # issued for the root secret by POST /auth/root-token
        return Principal("root", token_id=row.id)
    raise unauthorized("invalid token")


def require_root(principal: Principal) -> None:
    if not principal.is_root:
        raise forbidden("only the administrator may do this")


def require_user_or_root(principal: Principal) -> None:
    if principal.kind not in ("root", "user"):
        raise forbidden(f"a {principal.kind} token may not do this")

"""Provider support of spaces: a size in bytes of a provider's storage given to a space.

Support takes the provider's consent, as in Onezone: a space admin issues a *support
token* (optionally naming the provider and the size asked for), and the provider, or
root on its behalf, redeems it with the size it grants. Resizing is the provider's
call; revoking is possible from either side. A provider may cap the total it grants
(``Provider.support_limit``); a support or resize past it is refused with the numbers.

Every support change is scoped to the provider in the feed (``provider_id`` and
``space_id`` both set), so a provider sees its revocation even though the space leaves
its region with it; the provider agent keeps one directory per such change
(``control.provider``). Support tokens themselves are credentials, like provider
tokens, and not in the feed (a space admin lists them); the support they lead to is.
"""

from __future__ import annotations

from typing import Any

import peewee

from control.core.errors import conflict, forbidden, invalid, not_found
from control.core.models import iso, now
from control.registry import feed, usage
from control.registry.identity import Principal, find_secret, gone, issued_secret, new_secret
from control.registry.models import Provider, Space, Support, SupportToken


def support_data(space: Space, provider_id: int, size: int | None) -> dict[str, Any]:
    """The feed payload of every support change; ``size`` is None on revocation."""
    return {"space": space.id, "space_name": space.name, "provider": provider_id, "size": size}


def joined() -> peewee.ModelSelect:
    """Supports with their provider and space, for answers that name both."""
    return Support.select(Support, Provider, Space).join(Provider).switch(Support).join(Space)


def find(space_id: int, provider_id: int) -> Support | None:
    return joined().where(Support.space == space_id, Support.provider == provider_id).first()


def granted(provider_id: int) -> int:
    """Bytes the provider grants now, over all its supports (summed here: SQLite's SUM of
    sizes near 2**62 would overflow its 64-bit integers)."""
    return sum(size for (size,) in Support.select(Support.size).where(Support.provider == provider_id).tuples())


def check_limit(provider: Provider, size: int, current: Support | None = None) -> None:
    """Refuse a support (or a resize of ``current``) that takes the provider past its limit.

    Called after ``feed.serialise()``: two grants racing cannot both fit in the room one has.
    """
    if provider.support_limit is None:
        return
    total = granted(provider.id)
    after = total - (current.size if current is not None else 0) + size
    if after > provider.support_limit:
        change = f"resizing its support of space {current.space_id} to" if current else "a new support of"
        raise conflict(f"provider {provider.name} grants at most {provider.support_limit} bytes in total "
                       f"and grants {total} now: {change} {size} bytes would make {after}, "
                       f"{after - provider.support_limit} over its limit")


def create(space: Space, provider: Provider, size: int) -> Support:
    feed.serialise()
    check_limit(provider, size)
    support = Support.create(space=space, provider=provider, size=size)
    feed.record("support", support.id, "create", support_data(space, provider.id, size),
                space_id=space.id, provider_id=provider.id)
    return find(space.id, provider.id)


def resize(support: Support, size: int) -> None:
    if support.size == size:
        return
    feed.serialise()
    check_limit(support.provider, size, support)
    support.size = size
    support.updated_at = now()
    support.save()
    feed.record("support", support.id, "update", support_data(support.space, support.provider_id, size),
                space_id=support.space_id, provider_id=support.provider_id)
    usage.resized(support)


def revoke(support: Support) -> None:
    feed.record("support", support.id, "delete", support_data(support.space, support.provider_id, None),
                space_id=support.space_id, provider_id=support.provider_id)
    support.delete_instance()


def record_revocations(query: peewee.ModelSelect) -> None:
    """Before a space or provider is deleted (its supports go with it by cascade): each
    provider gets its own revocation, scoped to it, so it learns the support is gone."""
    for support in query:
        feed.record("support", support.id, "delete",
                    support_data(support.space, support.provider_id, None),
                    space_id=support.space_id, provider_id=support.provider_id)


# --- support tokens: the space admin's request, the provider's consent ----------------------


def token_state(row: SupportToken) -> str:
    if row.revoked:
        return "revoked"
    if row.used_at is not None:
        return "used"
    if row.expires_at <= now():
        return "expired"
    return "active"


def issue_token(principal: Principal, space: Space, provider_id: int | None, size: int | None,
                ttl: int) -> tuple[SupportToken, str]:
    """A new support token for the space and its secret (the only time the plaintext exists)."""
    if provider_id is not None and Provider.get_or_none(Provider.id == provider_id) is None:
        raise invalid(f"provider: provider {provider_id} does not exist")
    plain, hashed = new_secret("support")
    row = SupportToken.create(token_hash=hashed, space=space, provider=provider_id, size=size,
                              expires_at=now() + ttl,
                              created_by=principal.user.id if principal.user is not None else None)
    return row, plain


def tokens_of(space: Space) -> peewee.ModelSelect:
    return SupportToken.select().where(SupportToken.space == space.id)


def find_token(space: Space, token_id: int) -> SupportToken:
    return issued_secret(tokens_of(space), token_id, "support token")


def redeem(provider: Provider, token: str, size: int | None) -> Support:
    """The provider's consent: support the token's space with ``size`` bytes (default: the
    size the token asks for). Every check comes before any change."""
    row = find_secret(SupportToken, token)
    if row is None:
        raise not_found("support token", "with this token")
    current = token_state(row)
    if current == "revoked":
        raise gone("this support token was revoked")
    if current == "used":
        raise gone(f"this support token was already redeemed (by provider {row.used_by})")
    if current == "expired":
        raise gone(f"this support token expired at {iso(row.expires_at)}")
    if row.provider_id is not None and row.provider_id != provider.id:
        raise forbidden(f"this support token is for provider {row.provider_id}, not {provider.id}")
    size = size if size is not None else row.size
    if size is None:
        raise invalid("size: the token asks for no size; give the size the provider grants")
    space = row.space
    if find(space.id, provider.id) is not None:
        raise conflict(f"provider {provider.id} already supports space {space.id}; resize it with "
                       f"PUT /api/v1/providers/{provider.id}/spaces/{space.id}")
    taken = (SupportToken.update(used_at=now(), used_by=provider.id)
             .where(SupportToken.id == row.id, SupportToken.used_at.is_null(),
                    SupportToken.revoked == False, SupportToken.expires_at > now())  # noqa: E712
             .execute())
    if taken != 1:
        raise gone("this support token was redeemed or revoked meanwhile")
    return create(space, provider, size)

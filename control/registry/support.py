"""Provider support of spaces: a size in bytes of a provider's storage given to a space.

Every change is scoped to the provider in the feed (``provider_id`` and ``space_id``
both set), so a provider sees its revocation even though the space leaves its region
with it; the provider agent keeps one directory per such change (``control.provider``).
"""

from __future__ import annotations

from typing import Any

import peewee

from control.core.models import now
from control.registry import feed
from control.registry.models import Provider, Space, Support


def support_data(space: Space, provider_id: int, size: int | None) -> dict[str, Any]:
    """The feed payload of every support change; ``size`` is None on revocation."""
    return {"space": space.id, "space_name": space.name, "provider": provider_id, "size": size}


def joined() -> peewee.ModelSelect:
    """Supports with their provider and space, for answers that name both."""
    return Support.select(Support, Provider, Space).join(Provider).switch(Support).join(Space)


def find(space_id: int, provider_id: int) -> Support | None:
    return joined().where(Support.space == space_id, Support.provider == provider_id).first()


def create(space: Space, provider: Provider, size: int) -> Support:
    support = Support.create(space=space, provider=provider, size=size)
    feed.record("support", support.id, "create", support_data(space, provider.id, size),
                space_id=space.id, provider_id=provider.id)
    return find(space.id, provider.id)


def resize(support: Support, size: int) -> None:
    if support.size == size:
        return
    support.size = size
    support.updated_at = now()
    support.save()
    feed.record("support", support.id, "update", support_data(support.space, support.provider_id, size),
                space_id=support.space_id, provider_id=support.provider_id)


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

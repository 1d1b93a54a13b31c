"""Provider support of spaces: ``/spaces/{id}/providers/{pid}`` and ``/providers/{id}/spaces``.

A space admin (or root) makes a provider support the space with a size in bytes
(at least ``MIN_SUPPORT``), resizes it with the same PUT, and revokes it with DELETE.
As in Onezone, the provider's side may resize or revoke its own support too, but
not start one. Every change is scoped to the provider in the feed, so a provider
sees its revocation even though the space leaves its region with it.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import forbidden, not_found
from control.core.models import iso, now
from control.core.schemas import Page
from control.registry import feed
from control.registry.access import fetch, provider_access, space_access
from control.registry.models import Provider, Space, Support
from control.registry.schemas import SupportOut, SupportSize
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "support"


def support_out(s: Support) -> SupportOut:
    return SupportOut(space_id=s.space_id, space_name=s.space.name, provider_id=s.provider_id,
                      provider_name=s.provider.name, size=s.size, created_at=iso(s.created_at),
                      updated_at=iso(s.updated_at))


def support_data(space: Space, provider_id: int, size: int | None) -> dict[str, Any]:
    """The feed payload of every support change; ``size`` is None on revocation."""
    return {"space": space.id, "space_name": space.name, "provider": provider_id, "size": size}


def _writer(ctx: Context, space_id: int, provider_id: int) -> Space:
    """Space admins and root; the provider itself only for its own support."""
    principal = ctx.principal
    if principal.provider is not None:
        if principal.provider.id != provider_id:
            raise forbidden("a provider may only change its own support")
        return fetch(Space, space_id)
    space, _ = space_access(principal, space_id, "admin")
    return space


def _joined() -> Any:
    return Support.select(Support, Provider, Space).join(Provider).switch(Support).join(Space)


def _find(space_id: int, provider_id: int) -> Support | None:
    return _joined().where(Support.space == space_id, Support.provider == provider_id).first()


@route("GET", "/spaces/{id}/providers", summary="List the providers supporting a space", tag=TAG,
       query=paginated_query(), responses={200: Page[SupportOut]})
def list_space_supports(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    query = _joined().where(Support.space == id)
    return paginate(query, ctx, Provider.name, support_out)


@route("GET", "/spaces/{id}/providers/{pid}", summary="Show one provider's support of a space",
       tag=TAG, responses={200: SupportOut})
def show_support(ctx: Context, id: int, pid: int) -> SupportOut:
    space_access(ctx.principal, id)
    support = _find(id, pid)
    if support is None:
        raise not_found("support by provider", pid)
    return support_out(support)


@route("PUT", "/spaces/{id}/providers/{pid}",
       summary="Support a space with a size in bytes, or resize the support (space admin)",
       tag=TAG, body=SupportSize, responses={200: SupportOut, 201: SupportOut})
def put_support(ctx: Context, id: int, pid: int) -> Reply:
    space = _writer(ctx, id, pid)
    provider = fetch(Provider, pid)
    size = ctx.body.size
    support = _find(space.id, provider.id)
    if support is None:
        if ctx.principal.provider is not None:
            raise forbidden("a provider may resize or revoke its support, not start one")
        support = Support.create(space=space, provider=provider, size=size)
        feed.record("support", support.id, "create", support_data(space, provider.id, size),
                    space_id=space.id, provider_id=provider.id)
        return Reply(201, support_out(support))
    if support.size != size:
        support.size = size
        support.updated_at = now()
        support.save()
        feed.record("support", support.id, "update", support_data(space, provider.id, size),
                    space_id=space.id, provider_id=provider.id)
    return Reply(200, support_out(support))


@route("DELETE", "/spaces/{id}/providers/{pid}",
       summary="Revoke a provider's support of a space (space admin, or the provider)",
       tag=TAG, responses={204: None})
def delete_support(ctx: Context, id: int, pid: int) -> None:
    space = _writer(ctx, id, pid)
    support = _find(space.id, pid)
    if support is None:
        raise not_found("support by provider", pid)
    feed.record("support", support.id, "delete", support_data(space, pid, None),
                space_id=space.id, provider_id=pid)
    support.delete_instance()


@route("GET", "/providers/{id}/spaces",
       summary="The spaces a provider supports (administrator or itself)", tag=TAG,
       query=paginated_query(), responses={200: Page[SupportOut]})
def list_provider_supports(ctx: Context, id: int) -> dict[str, Any]:
    provider_access(ctx.principal, id)
    return paginate(_joined().where(Support.provider == id), ctx, Space.name, support_out)

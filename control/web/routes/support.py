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
from control.core.models import iso
from control.core.schemas import Page
from control.registry import support
from control.registry.access import fetch, provider_access, space_access, support_writer
from control.registry.models import Provider, Space, Support
from control.registry.schemas import SupportOut, SupportSize
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "support"


def support_out(s: Support) -> SupportOut:
    return SupportOut(space_id=s.space_id, space_name=s.space.name, provider_id=s.provider_id,
                      provider_name=s.provider.name, size=s.size, created_at=iso(s.created_at),
                      updated_at=iso(s.updated_at))


@route("GET", "/spaces/{id}/providers", summary="List the providers supporting a space", tag=TAG,
       query=paginated_query(), responses={200: Page[SupportOut]})
def list_space_supports(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    query = support.joined().where(Support.space == id)
    return paginate(query, ctx, Provider.name, support_out)


@route("GET", "/spaces/{id}/providers/{pid}", summary="Show one provider's support of a space",
       tag=TAG, responses={200: SupportOut})
def show_support(ctx: Context, id: int, pid: int) -> SupportOut:
    space_access(ctx.principal, id)
    found = support.find(id, pid)
    if found is None:
        raise not_found("support by provider", pid)
    return support_out(found)


@route("PUT", "/spaces/{id}/providers/{pid}",
       summary="Support a space with a size in bytes, or resize the support (space admin)",
       tag=TAG, body=SupportSize, responses={200: SupportOut, 201: SupportOut})
def put_support(ctx: Context, id: int, pid: int) -> Reply:
    space = support_writer(ctx.principal, id, pid)
    provider = fetch(Provider, pid)
    size = ctx.body.size
    found = support.find(space.id, provider.id)
    if found is None:
        if ctx.principal.provider is not None:
            raise forbidden("a provider may resize or revoke its support, not start one")
        return Reply(201, support_out(support.create(space, provider, size)))
    support.resize(found, size)
    return Reply(200, support_out(found))


@route("DELETE", "/spaces/{id}/providers/{pid}",
       summary="Revoke a provider's support of a space (space admin, or the provider)",
       tag=TAG, responses={204: None})
def delete_support(ctx: Context, id: int, pid: int) -> None:
    space = support_writer(ctx.principal, id, pid)
    found = support.find(space.id, pid)
    if found is None:
        raise not_found("support by provider", pid)
    support.revoke(found)


@route("GET", "/providers/{id}/spaces",
       summary="The spaces a provider supports (administrator or itself)", tag=TAG,
       query=paginated_query(), responses={200: Page[SupportOut]})
def list_provider_supports(ctx: Context, id: int) -> dict[str, Any]:
    provider_access(ctx.principal, id)
    return paginate(support.joined().where(Support.provider == id), ctx, Space.name, support_out)

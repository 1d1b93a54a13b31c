"""Storage providers: the administrator registers them; each gets a token shown once.

Registration is friendly to idempotent clients (the Ansible module): a taken name is a
409, and ``GET /providers?name=X`` finds the existing one (a substring filter; compare
names exactly on the client). Users may read providers, so a space admin can find the
one to ask for support (``granted`` against ``support_limit`` says how much room it
has); a provider token sees only itself. The support itself lives in
``control.web.routes.support``.
"""

from __future__ import annotations

from typing import Any

from control.core.models import iso
from control.core.schemas import Page
from control.registry import providers, support
from control.registry.access import fetch, provider_access, provider_read, visible_providers
from control.registry.identity import require_root
from control.registry.models import Provider
from control.registry.schemas import ProviderCreate, ProviderOut, ProviderRegistered, ProviderUpdate
from control.web.listing import visible_rows
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "providers"


def provider_out(p: Provider) -> ProviderOut:
    return ProviderOut(id=p.id, name=p.name, domain=p.domain, admin_email=p.admin_email,
                       sftp_host=p.sftp_host, sftp_port=p.sftp_port, sftp_user=p.sftp_user,
                       storage_path=p.storage_path, support_limit=p.support_limit,
                       granted=support.granted(p.id), region=p.region, created_at=iso(p.created_at),
                       updated_at=iso(p.updated_at))


@route("GET", "/providers", summary="List providers (a provider token sees itself)", tag=TAG,
       query=paginated_query(), responses={200: Page[ProviderOut]})
def list_providers(ctx: Context) -> dict[str, Any]:
    query = visible_rows(Provider, visible_providers(ctx.principal))
    return paginate(query, ctx, Provider.name, provider_out)


@route("POST", "/providers", summary="Register a provider (administrator); the token is shown once",
       tag=TAG, body=ProviderCreate, responses={201: ProviderRegistered})
def create_provider(ctx: Context) -> Reply:
    require_root(ctx.principal)
    provider, token = providers.register(ctx.body.model_dump())
    return Reply(201, ProviderRegistered(provider=provider_out(provider), token=token),
                 {"Location": f"/api/v1/providers/{provider.id}", "Cache-Control": "no-store"})


@route("GET", "/providers/{id}", summary="Show a provider", tag=TAG, responses={200: ProviderOut})
def show_provider(ctx: Context, id: int) -> ProviderOut:
    return provider_out(provider_read(ctx.principal, id))


@route("PATCH", "/providers/{id}", summary="Update a provider (administrator or itself)", tag=TAG,
       body=ProviderUpdate, responses={200: ProviderOut})
def update_provider(ctx: Context, id: int) -> ProviderOut:
    provider = provider_access(ctx.principal, id)
    providers.update(provider, ctx.body.model_dump(exclude_unset=True))
    return provider_out(provider)


@route("DELETE", "/providers/{id}", summary="Delete a provider (administrator); its supports go too",
       tag=TAG, responses={204: None})
def delete_provider(ctx: Context, id: int) -> None:
    require_root(ctx.principal)
    providers.delete(fetch(Provider, id))


@route("POST", "/providers/{id}/token",
       summary="Rotate the provider token (administrator or itself): old tokens stop working",
       tag=TAG, responses={200: ProviderRegistered})
def rotate_token(ctx: Context, id: int) -> Reply:
    provider = provider_access(ctx.principal, id)
    token = providers.rotate_token(provider)
    return Reply(200, ProviderRegistered(provider=provider_out(provider), token=token),
                 {"Cache-Control": "no-store"})

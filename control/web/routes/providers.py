"""Storage providers: the administrator registers them; each gets a token shown once.

Registration is friendly to idempotent clients (the Ansible module): a taken name is a
409, and ``GET /providers?name=X`` finds the existing one (a substring filter; compare
names exactly on the client). Users may read providers, so a space admin can find the
one to ask for support; a provider token sees only itself.
"""

from __future__ import annotations

from typing import Any

from control.core.models import iso, now
from control.core.schemas import Page
from control.registry import feed
from control.registry.access import fetch, provider_access
from control.registry.identity import new_token, require_root, require_user_or_root
from control.registry.models import Provider, Space, Support, Token
from control.registry.schemas import ProviderCreate, ProviderOut, ProviderRegistered, ProviderUpdate
from control.web.listing import unique_name
from control.web.routes.support import support_data
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "providers"
FIELDS = ("name", "domain", "admin_email", "sftp_host", "sftp_port", "sftp_user", "storage_path")


def provider_out(p: Provider) -> ProviderOut:
    return ProviderOut(id=p.id, name=p.name, domain=p.domain, admin_email=p.admin_email,
                       sftp_host=p.sftp_host, sftp_port=p.sftp_port, sftp_user=p.sftp_user,
                       storage_path=p.storage_path, created_at=iso(p.created_at),
                       updated_at=iso(p.updated_at))


def _feed_data(p: Provider) -> dict[str, Any]:
    return {f: getattr(p, f) for f in FIELDS if f != "admin_email"}



def _issue_token(provider: Provider) -> str:
    plain, _ = new_token("provider", provider=provider)
    return plain


@route("GET", "/providers", summary="List providers (a provider token sees itself)", tag=TAG,
       query=paginated_query(), responses={200: Page[ProviderOut]})
def list_providers(ctx: Context) -> dict[str, Any]:
    query = Provider.select()
    if ctx.principal.provider is not None:
        query = query.where(Provider.id == ctx.principal.provider.id)
    else:
        require_user_or_root(ctx.principal)
    return paginate(query, ctx, Provider.name, provider_out)


@route("POST", "/providers", summary="Register a provider (administrator); the token is shown once",
       tag=TAG, body=ProviderCreate, responses={201: ProviderRegistered})
def create_provider(ctx: Context) -> Reply:
    require_root(ctx.principal)
    req: ProviderCreate = ctx.body
    unique_name(Provider, req.name)
    provider = Provider.create(**req.model_dump())
    feed.record("provider", provider.id, "create", _feed_data(provider), provider_id=provider.id)
    token = _issue_token(provider)
    return Reply(201, ProviderRegistered(provider=provider_out(provider), token=token),
                 {"Location": f"/api/v1/providers/{provider.id}", "Cache-Control": "no-store"})


@route("GET", "/providers/{id}", summary="Show a provider", tag=TAG, responses={200: ProviderOut})
def show_provider(ctx: Context, id: int) -> ProviderOut:
    if ctx.principal.provider is not None:
        return provider_out(provider_access(ctx.principal, id))
    require_user_or_root(ctx.principal)
    return provider_out(fetch(Provider, id))


@route("PATCH", "/providers/{id}", summary="Update a provider (administrator or itself)", tag=TAG,
       body=ProviderUpdate, responses={200: ProviderOut})
def update_provider(ctx: Context, id: int) -> ProviderOut:
    provider = provider_access(ctx.principal, id)
    changes = ctx.body.model_dump(exclude_unset=True)
    for name in ("name", "domain", "admin_email", "sftp_port"):
        if name in changes and changes[name] is None:
            changes.pop(name)  # required columns: null means "leave as is"
    if changes.get("name") not in (None, provider.name):
        unique_name(Provider, changes["name"], provider.id)
    if any(getattr(provider, k) != v for k, v in changes.items()):
        for k, v in changes.items():
            setattr(provider, k, v)
        provider.updated_at = now()
        provider.save()
        feed.record("provider", provider.id, "update", _feed_data(provider), provider_id=provider.id)
    return provider_out(provider)


@route("DELETE", "/providers/{id}", summary="Delete a provider (administrator); its supports go too",
       tag=TAG, responses={204: None})
def delete_provider(ctx: Context, id: int) -> None:
    require_root(ctx.principal)
    provider = fetch(Provider, id)
    for support in Support.select(Support, Space).join(Space).where(Support.provider == provider.id):
        feed.record("support", support.id, "delete", support_data(support.space, provider.id, None),
                    space_id=support.space_id, provider_id=provider.id)
    feed.record("provider", provider.id, "delete", {"name": provider.name}, provider_id=provider.id)
    provider.delete_instance(recursive=True, delete_nullable=True)


@route("POST", "/providers/{id}/token",
       summary="Rotate the provider token (administrator or itself): old tokens stop working",
       tag=TAG, responses={200: ProviderRegistered})
def rotate_token(ctx: Context, id: int) -> Reply:
    provider = provider_access(ctx.principal, id)
    Token.update(revoked=True).where(Token.provider == provider.id, Token.kind == "provider").execute()
    token = _issue_token(provider)
    return Reply(200, ProviderRegistered(provider=provider_out(provider), token=token),
                 {"Cache-Control": "no-store"})

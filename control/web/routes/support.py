"""Provider support of spaces, which takes the provider's consent (as in Onezone).

1. A space admin (or root) issues a support token: ``POST /spaces/{id}/support_tokens``,
   optionally naming the provider, the size asked for and an expiry. It is shown once.
2. The provider redeems it with its own token, and the size it grants:
   ``POST /providers/{id}/supports``. Root may do it on the provider's behalf.

Resizing is the provider's call (``PUT /providers/{id}/spaces/{sid}``, the provider or
root); revoking is possible from either side (``DELETE /spaces/{id}/providers/{pid}``
for space admins, ``DELETE /providers/{id}/spaces/{sid}`` for the provider). The old
``PUT /spaces/{id}/providers/{pid}`` only lets the provider itself resize its support:
anyone else gets 403 pointing to the token flow.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import forbidden, not_found
from control.core.models import iso
from control.core.schemas import Page
from control.registry import support, usage
from control.registry.access import fetch, provider_access, space_access, support_writer
from control.registry.identity import revoke_secret, secret_lifetime
from control.registry.models import Provider, Space, Support, SupportToken
from control.registry.schemas import (
    SupportOut,
    SupportRedeem,
    SupportSize,
    SupportTokenCreate,
    SupportTokenIssued,
    SupportTokenOut,
    UsageAccepted,
    UsageReport,
)
from control.web.listing import page_query
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "support"
OLD_ROUTE = ("support takes the provider's consent: a space admin issues a support token "
             "(POST /api/v1/spaces/{id}/support_tokens) and the provider redeems it with the size it "
             "grants (POST /api/v1/providers/{pid}/supports); here only the provider resizes its support")


def support_out(s: Support) -> SupportOut:
    return SupportOut(space_id=s.space_id, space_name=s.space.name, provider_id=s.provider_id,
                      provider_name=s.provider.name, size=s.size, used=s.used, files=s.files,
                      measured_at=iso(s.measured_at),
                      over_quota=s.over_quota, created_at=iso(s.created_at),
                      updated_at=iso(s.updated_at))


def token_out(t: SupportToken) -> SupportTokenOut:
    return SupportTokenOut(id=t.id, space_id=t.space_id, provider_id=t.provider_id, size=t.size,
                           state=support.token_state(t), used_by=t.used_by,
                           expires_at=iso(t.expires_at), created_by=t.created_by,
                           created_at=iso(t.created_at))


def _existing(space_id: int, provider_id: int) -> Support:
    found = support.find(space_id, provider_id)
    if found is None:
        raise not_found("support by provider", provider_id)
    return found


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
    return support_out(_existing(id, pid))


@route("PUT", "/spaces/{id}/providers/{pid}",
       summary="Resize the provider's own support (the provider only). Everyone else gets 403: "
               "support starts with a support token (POST /spaces/{id}/support_tokens) that the "
               "provider redeems (POST /providers/{pid}/supports)",
       tag=TAG, body=SupportSize, responses={200: SupportOut})
def put_support(ctx: Context, id: int, pid: int) -> SupportOut:
    if ctx.principal.provider is None:
        raise forbidden(OLD_ROUTE.format(id=id, pid=pid))
    space = support_writer(ctx.principal, id, pid)
    found = support.find(space.id, pid)
    if found is None:
        raise forbidden("a provider starts a support by redeeming a support token "
                        f"(POST /api/v1/providers/{pid}/supports), not here")
    support.resize(found, ctx.body.size)
    return support_out(found)


@route("DELETE", "/spaces/{id}/providers/{pid}",
       summary="Revoke a provider's support of a space (space admin, or the provider)",
       tag=TAG, responses={204: None})
def delete_support(ctx: Context, id: int, pid: int) -> None:
    space = support_writer(ctx.principal, id, pid)
    support.revoke(_existing(space.id, pid))


@route("POST", "/spaces/{id}/support_tokens",
       summary="Ask a provider for support (space admin): a support token, shown once, for the "
               "provider to redeem", tag=TAG, body=SupportTokenCreate, responses={201: SupportTokenIssued})
def create_support_token(ctx: Context, id: int) -> Reply:
    space, _ = space_access(ctx.principal, id, "admin")
    req: SupportTokenCreate = ctx.body
    ttl = secret_lifetime(req.expires_in, ctx.settings.invite_max_ttl)
    row, token = support.issue_token(ctx.principal, space, req.provider, req.size, ttl)
    return Reply(201, SupportTokenIssued(support_token=token_out(row), token=token),
                 {"Cache-Control": "no-store"})


@route("GET", "/spaces/{id}/support_tokens",
       summary="The support tokens issued for a space and their state (space admin); never the "
               "tokens themselves", tag=TAG, query=page_query(), responses={200: Page[SupportTokenOut]})
def list_support_tokens(ctx: Context, id: int) -> dict[str, Any]:
    space, _ = space_access(ctx.principal, id, "admin")
    return paginate(support.tokens_of(space), ctx, None, token_out)


@route("DELETE", "/spaces/{id}/support_tokens/{tid}", summary="Revoke a support token (space admin)",
       tag=TAG, responses={204: None})
def delete_support_token(ctx: Context, id: int, tid: int) -> None:
    space, _ = space_access(ctx.principal, id, "admin")
    revoke_secret(support.find_token(space, tid))


@route("POST", "/providers/{id}/supports",
       summary="Redeem a support token (the provider, or root on its behalf) with the size it "
               "grants; refused past the provider's support_limit", tag=TAG, body=SupportRedeem,
       responses={201: SupportOut})
def redeem_support_token(ctx: Context, id: int) -> Reply:
    provider = provider_access(ctx.principal, id)
    req: SupportRedeem = ctx.body
    made = support.redeem(provider, req.token, req.size)
    return Reply(201, support_out(made),
                 {"Location": f"/api/v1/providers/{provider.id}/spaces/{made.space_id}"})


@route("GET", "/providers/{id}/spaces",
       summary="The spaces a provider supports (administrator or itself)", tag=TAG,
       query=paginated_query(), responses={200: Page[SupportOut]})
def list_provider_supports(ctx: Context, id: int) -> dict[str, Any]:
    provider_access(ctx.principal, id)
    return paginate(support.joined().where(Support.provider == id), ctx, Space.name, support_out)


@route("GET", "/providers/{id}/spaces/{sid}", summary="One support of the provider (administrator or itself)",
       tag=TAG, responses={200: SupportOut})
def show_provider_support(ctx: Context, id: int, sid: int) -> SupportOut:
    provider_access(ctx.principal, id)
    return support_out(_existing(fetch(Space, sid).id, id))


@route("PUT", "/providers/{id}/spaces/{sid}",
       summary="Resize a support (the provider, or root on its behalf); refused past the "
               "provider's support_limit", tag=TAG, body=SupportSize, responses={200: SupportOut})
def resize_support(ctx: Context, id: int, sid: int) -> SupportOut:
    provider_access(ctx.principal, id)
    found = _existing(fetch(Space, sid).id, id)
    support.resize(found, ctx.body.size)
    return support_out(found)


@route("DELETE", "/providers/{id}/spaces/{sid}",
       summary="Revoke a support (the provider, or root on its behalf)", tag=TAG, responses={204: None})
def revoke_provider_support(ctx: Context, id: int, sid: int) -> None:
    provider_access(ctx.principal, id)
    support.revoke(_existing(fetch(Space, sid).id, id))


@route("POST", "/providers/{id}/usage",
       summary="Report the usage of the spaces the provider supports (the provider's agent, or root): "
               "bytes and files per space; a space past its size is marked over quota", tag=TAG,
       body=UsageReport, responses={200: UsageAccepted})
def report_usage(ctx: Context, id: int) -> UsageAccepted:
    provider = provider_access(ctx.principal, id)
    req: UsageReport = ctx.body
    changed, over, ignored = usage.report(provider, [(e.space_id, e.used, e.files) for e in req.spaces])
    return UsageAccepted(updated=changed, over_quota=over, ignored=ignored)

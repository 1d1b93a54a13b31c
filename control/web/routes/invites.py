"""Invite tokens for spaces and groups: issue, list, revoke (admins) and join (anyone holding one).

``POST /spaces/{id}/invites`` and ``POST /groups/{id}/invites`` answer the token once;
listings show each invite's state, never the token. ``POST /spaces/join`` and
``POST /groups/join`` redeem one, for the caller or, with ``group``, for a group the
caller administers. See ``control.registry.invites`` for the rules.
"""

from __future__ import annotations

from typing import Any

from control.core.models import iso
from control.core.schemas import Page
from control.registry import invites
from control.registry.access import group_access, require_grant, space_access
from control.registry.identity import secret_lifetime
from control.registry.models import Invite, Space
from control.registry.schemas import InviteCreate, InviteIssued, InviteOut, InviteRedeem, JoinedOut
from control.web.listing import page_query
from control.web.routing import Context, Reply, paginate, route

TAG = "invites"
ACCESS = {"spaces": space_access, "groups": group_access}


def invite_out(i: Invite) -> InviteOut:
    return InviteOut(id=i.id, space_id=i.space_id, group_id=i.group_id, role=i.role, subject=i.subject,
                     uses=i.uses, max_uses=i.max_uses, state=invites.state(i),
                     expires_at=iso(i.expires_at), created_by=i.created_by, created_at=iso(i.created_at))


def _issue(ctx: Context, kind: str, ident: int) -> Reply:
    target, actor = ACCESS[kind](ctx.principal, ident, "admin")
    req: InviteCreate = ctx.body
    require_grant(ctx.principal, actor, req.role)  # an invite grants no more than its issuer may
    ttl = secret_lifetime(req.expires_in, ctx.settings.invite_max_ttl)
    invite, token = invites.issue(ctx.principal, target, req.subject, req.role, req.uses, ttl)
    return Reply(201, InviteIssued(invite=invite_out(invite), token=token), {"Cache-Control": "no-store"})


def _list(ctx: Context, kind: str, ident: int) -> dict[str, Any]:
    target, _ = ACCESS[kind](ctx.principal, ident, "admin")
    return paginate(invites.listing(target), ctx, None, invite_out)


def _revoke(ctx: Context, kind: str, ident: int, iid: int) -> None:
    target, _ = ACCESS[kind](ctx.principal, ident, "admin")
    invites.revoke(invites.find(target, iid))


def _join(ctx: Context, kind: str) -> Reply:
    req: InviteRedeem = ctx.body
    joined = invites.redeem(ctx.principal, kind, req.token, req.group)
    target, member = joined.target, joined.member
    return Reply(201, JoinedOut(target="space" if isinstance(target, Space) else "group",
                                target_id=target.id, target_name=target.name,
                                member="group" if req.group is not None else "user",
                                member_id=member.id, role=joined.role))


@route("POST", "/spaces/{id}/invites",
       summary="Issue an invite token to the space (admin): the role it grants (at most the "
               "issuer's), who redeems it, uses and expiry; the token is shown once",
       tag=TAG, body=InviteCreate, responses={201: InviteIssued})
def create_space_invite(ctx: Context, id: int) -> Reply:
    return _issue(ctx, "spaces", id)


@route("GET", "/spaces/{id}/invites", summary="The space's invites and their state (admin); never the tokens",
       tag=TAG, query=page_query(), responses={200: Page[InviteOut]})
def list_space_invites(ctx: Context, id: int) -> dict[str, Any]:
    return _list(ctx, "spaces", id)


@route("DELETE", "/spaces/{id}/invites/{iid}", summary="Revoke an invite to the space (admin)", tag=TAG,
       responses={204: None})
def delete_space_invite(ctx: Context, id: int, iid: int) -> None:
    _revoke(ctx, "spaces", id, iid)


@route("POST", "/spaces/join",
       summary="Join a space with an invite token: as the caller, or (with `group`) as a group the "
               "caller administers; 410 for an expired, used-up or revoked token",
       tag=TAG, body=InviteRedeem, responses={201: JoinedOut})
def join_space(ctx: Context) -> Reply:
    return _join(ctx, "space")


@route("POST", "/groups/{id}/invites",
       summary="Issue an invite token to the group (admin); a group invited nests as a child",
       tag=TAG, body=InviteCreate, responses={201: InviteIssued})
def create_group_invite(ctx: Context, id: int) -> Reply:
    return _issue(ctx, "groups", id)


@route("GET", "/groups/{id}/invites", summary="The group's invites and their state (admin); never the tokens",
       tag=TAG, query=page_query(), responses={200: Page[InviteOut]})
def list_group_invites(ctx: Context, id: int) -> dict[str, Any]:
    return _list(ctx, "groups", id)


@route("DELETE", "/groups/{id}/invites/{iid}", summary="Revoke an invite to the group (admin)", tag=TAG,
       responses={204: None})
def delete_group_invite(ctx: Context, id: int, iid: int) -> None:
    _revoke(ctx, "groups", id, iid)


@route("POST", "/groups/join",
       summary="Join a group with an invite token: as the caller, or (with `group`) nesting a group "
               "the caller administers; 410 for an expired, used-up or revoked token",
       tag=TAG, body=InviteRedeem, responses={201: JoinedOut})
def join_group(ctx: Context) -> Reply:
    return _join(ctx, "group")

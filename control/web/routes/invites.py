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
ACCESS = {"space": space_access, "group": group_access}


def invite_out(i: Invite) -> InviteOut:
    return InviteOut(id=i.id, space_id=i.space_id, group_id=i.group_id, role=i.role, subject=i.subject,
                     uses=i.uses, max_uses=i.max_uses, state=invites.state(i),
                     expires_at=iso(i.expires_at), created_by=i.created_by, created_at=iso(i.created_at))


def _join(ctx: Context, kind: str) -> Reply:
    req: InviteRedeem = ctx.body
    joined = invites.redeem(ctx.principal, kind, req.token, req.group)
    target, member = joined.target, joined.member
    return Reply(201, JoinedOut(target="space" if isinstance(target, Space) else "group",
                                target_id=target.id, target_name=target.name,
                                member="group" if req.group is not None else "user",
                                member_id=member.id, role=joined.role))


def _invite_routes(kind: str, issued: str, joining_group: str) -> None:
    """Declare the invite routes of spaces or groups (``kind``): issue, list, revoke and join;
    ``issued`` and ``joining_group`` finish the summaries where the two kinds differ."""
    access, base = ACCESS[kind], f"/{kind}s"

    @route("POST", base + "/{id}/invites", summary=f"Issue an invite token to the {kind} (admin){issued}",
           tag=TAG, body=InviteCreate, responses={201: InviteIssued}, name=f"create_{kind}_invite")
    def create(ctx: Context, id: int) -> Reply:
        target, actor = access(ctx.principal, id, "admin")
        req: InviteCreate = ctx.body
        require_grant(ctx.principal, actor, req.role)  # an invite grants no more than its issuer may
        ttl = secret_lifetime(req.expires_in, ctx.settings.invite_max_ttl)
        invite, token = invites.issue(ctx.principal, target, req.subject, req.role, req.uses, ttl)
        return Reply(201, InviteIssued(invite=invite_out(invite), token=token), {"Cache-Control": "no-store"})

    @route("GET", base + "/{id}/invites", summary=f"The {kind}'s invites and their state (admin); never the tokens",
           tag=TAG, query=page_query(), responses={200: Page[InviteOut]}, name=f"list_{kind}_invites")
    def listing(ctx: Context, id: int) -> dict[str, Any]:
        target, _ = access(ctx.principal, id, "admin")
        return paginate(invites.listing(target), ctx, None, invite_out)

    @route("DELETE", base + "/{id}/invites/{iid}", summary=f"Revoke an invite to the {kind} (admin)", tag=TAG,
           responses={204: None}, name=f"delete_{kind}_invite")
    def revoke(ctx: Context, id: int, iid: int) -> None:
        target, _ = access(ctx.principal, id, "admin")
        invites.revoke(invites.find(target, iid))

    @route("POST", base + "/join",
           summary=f"Join a {kind} with an invite token: as the caller, or (with `group`) {joining_group}; "
                   "410 for an expired, used-up or revoked token",
           tag=TAG, body=InviteRedeem, responses={201: JoinedOut}, name=f"join_{kind}")
    def join(ctx: Context) -> Reply:
        return _join(ctx, kind)


_invite_routes("space", ": the role it grants (at most the issuer's), who redeems it, uses and expiry; "
               "the token is shown once", "as a group the caller administers")
_invite_routes("group", "; a group invited nests as a child", "nesting a group the caller administers")

"""Spaces: users and groups as members, the creator as owner, effective users through groups.

Provider support of a space (``/spaces/{id}/providers/{pid}``) lives in
``control.web.routes.support``; this module holds the space itself and its member relations.
The routes a space shares with a group (itself, its users, its effective users) are
declared by ``control.web.owned``.
"""

from __future__ import annotations

from typing import Any

from control.core.schemas import Page
from control.registry import membership, spaces
from control.registry.access import READ, fetch, group_access, require_grant, space_access, visible_spaces
from control.registry.models import Group, Space, SpaceGroup
from control.registry.schemas import GroupMemberOut, SpaceCreate, SpaceGroupRole, SpaceOut, SpaceUpdate
from control.web.listing import group_member_out, visible_rows
from control.web.owned import OwnedKind, owned_routes
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "spaces"
SPACES = OwnedKind(Space, SpaceOut, SpaceCreate, SpaceUpdate, space_access, spaces.delete,
                   membership.Chains.of_space, delete_note="; its supports are revoked",
                   through="(nested) member groups", chain="space, group, nested group, ..., user")


@route("GET", "/spaces", summary="List the spaces the caller can see", tag=TAG,
       query=paginated_query(), responses={200: Page[SpaceOut]})
def list_spaces(ctx: Context) -> dict[str, Any]:
    user = ctx.principal.user
    query = visible_rows(Space, visible_spaces(ctx.principal))

    def out(space: Space) -> SpaceOut:
        return SPACES.to_out(space, membership.space_role(user.id, space.id) if user else None)

    return paginate(query, ctx, Space.name, out)


owned_routes(SPACES)


@route("GET", "/spaces/{id}/groups", summary="List a space's direct member groups", tag=TAG,
       query=paginated_query(), responses={200: Page[GroupMemberOut]})
def list_space_groups(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    query = SpaceGroup.select(SpaceGroup, Group).join(Group).where(SpaceGroup.space == id)
    return paginate(query, ctx, Group.name, lambda r: group_member_out(r.group, r.role))


@route("PUT", "/spaces/{id}/groups/{gid}",
       summary="Add a group to a space (space admin and group member) or change its role",
       tag=TAG, body=SpaceGroupRole, responses={200: GroupMemberOut, 201: GroupMemberOut})
def put_space_group(ctx: Context, id: int, gid: int) -> Reply:
    space, actor = space_access(ctx.principal, id, "admin")
    row = SpaceGroup.get_or_none(SpaceGroup.space == space.id, SpaceGroup.group == gid)
    # Joining takes the group's consent (a member of it acts); a member group's role is
    # the space's business alone.
    group = group_access(ctx.principal, gid, READ)[0] if row is None else fetch(Group, gid)
    role = ctx.body.role
    require_grant(ctx.principal, actor, role, row.role if row else None)
    if row is None:
        spaces.add_group(space, group, role)
        return Reply(201, group_member_out(group, role))
    spaces.set_group_role(row, role)
    return Reply(200, group_member_out(group, role))


@route("DELETE", "/spaces/{id}/groups/{gid}", summary="Remove a group from a space (admin)",
       tag=TAG, responses={204: None})
def delete_space_group(ctx: Context, id: int, gid: int) -> None:
    space, actor = space_access(ctx.principal, id, "admin")
    spaces.remove_group(ctx.principal, actor, space, gid)

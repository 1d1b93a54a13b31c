"""Spaces: users and groups as members, the creator as owner, effective users through groups.

Provider support of a space (``/spaces/{id}/providers/{pid}``) lives in
``control.web.routes.support``; this module holds the space itself and its member relations.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import not_found
from control.core.models import iso
from control.core.schemas import Page
from control.registry import members, membership, spaces
from control.registry.access import READ, fetch, group_access, require_grant, space_access, visible_spaces
from control.registry.identity import require_user_or_root
from control.registry.models import Group, Space, SpaceGroup, SpaceUser, User
from control.registry.schemas import (
    ChainLink,
    EffectiveUserOut,
    GroupMemberOut,
    MemberOut,
    MemberRole,
    SpaceCreate,
    SpaceGroupRole,
    SpaceOut,
    SpaceUpdate,
)
from control.web.listing import chain_page, effective_page, group_member_out, list_members, member_out, page_query
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "spaces"


def space_out(space: Space, role: str | None) -> SpaceOut:
    return SpaceOut(id=space.id, name=space.name, role=role, created_at=iso(space.created_at),
                    updated_at=iso(space.updated_at))


@route("GET", "/spaces", summary="List the spaces the caller can see", tag=TAG,
       query=paginated_query(), responses={200: Page[SpaceOut]})
def list_spaces(ctx: Context) -> dict[str, Any]:
    ids = visible_spaces(ctx.principal)
    query = Space.select()
    if ids is not None:
        query = query.where(Space.id.in_(sorted(ids)))
    user = ctx.principal.user

    def out(space: Space) -> SpaceOut:
        return space_out(space, membership.space_role(user.id, space.id) if user else None)

    return paginate(query, ctx, Space.name, out)


@route("POST", "/spaces", summary="Create a space; a user creating it becomes its owner",
       tag=TAG, body=SpaceCreate, responses={201: SpaceOut})
def create_space(ctx: Context) -> Reply:
    require_user_or_root(ctx.principal)
    req: SpaceCreate = ctx.body
    space = spaces.create(ctx.principal, req.name, req.owner)
    return Reply(201, space_out(space, "owner" if ctx.principal.user else None),
                 {"Location": f"/api/v1/spaces/{space.id}"})


@route("GET", "/spaces/{id}", summary="Show a space", tag=TAG, responses={200: SpaceOut})
def show_space(ctx: Context, id: int) -> SpaceOut:
    space, role = space_access(ctx.principal, id)
    return space_out(space, role)


@route("PATCH", "/spaces/{id}", summary="Rename a space (admin)", tag=TAG, body=SpaceUpdate,
       responses={200: SpaceOut})
def update_space(ctx: Context, id: int) -> SpaceOut:
    space, role = space_access(ctx.principal, id, "admin")
    spaces.rename(space, ctx.body.name)
    return space_out(space, role)


@route("DELETE", "/spaces/{id}", summary="Delete a space (owner); its supports are revoked",
       tag=TAG, responses={204: None})
def delete_space(ctx: Context, id: int) -> None:
    space, _ = space_access(ctx.principal, id, "owner")
    spaces.delete(space)


@route("GET", "/spaces/{id}/users", summary="List a space's direct users", tag=TAG,
       query=paginated_query(), responses={200: Page[MemberOut]})
def list_space_users(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    return list_members(SpaceUser, id, ctx)


@route("PUT", "/spaces/{id}/users/{uid}", summary="Add a user to a space or change its role (admin)",
       tag=TAG, body=MemberRole, responses={200: MemberOut, 201: MemberOut})
def put_space_user(ctx: Context, id: int, uid: int) -> Reply:
    _, role = space_access(ctx.principal, id, "admin")
    user, added = members.put(ctx.principal, role, SpaceUser, id, uid, ctx.body.role)
    return Reply(201 if added else 200, member_out(user, ctx.body.role))


@route("DELETE", "/spaces/{id}/users/{uid}", summary="Remove a user from a space (admin, or itself)",
       tag=TAG, responses={204: None})
def delete_space_user(ctx: Context, id: int, uid: int) -> None:
    leaving = ctx.principal.user is not None and ctx.principal.user.id == uid
    _, role = space_access(ctx.principal, id, READ if leaving else "admin")
    members.remove(ctx.principal, role, SpaceUser, id, uid)


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


@route("GET", "/spaces/{id}/effective_users",
       summary="Users of the space directly or through (nested) member groups", tag=TAG,
       query=paginated_query(), responses={200: Page[EffectiveUserOut]})
def list_space_effective_users(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    return effective_page(membership.EffectiveUsers("space", id), ctx)


@route("GET", "/spaces/{id}/effective_users/{uid}/membership",
       summary="Every chain of intermediaries through which the user belongs to the space: "
               "[space, group, nested group, ..., user]", tag=TAG, query=page_query(),
       responses={200: Page[list[ChainLink]]})
def space_membership_chains(ctx: Context, id: int, uid: int) -> dict[str, Any]:
    space, _ = space_access(ctx.principal, id)
    user = fetch(User, uid)
    chains = membership.Chains.of_space(space.id, user.id)
    if chains.total == 0:
        raise not_found(f"member of space {space.id}: user", uid)
    return chain_page(chains, ChainLink(type="space", id=space.id, name=space.name), user, ctx)

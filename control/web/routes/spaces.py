"""Spaces: users and groups as members, the creator as owner, effective users through groups.

Provider support of a space (``/spaces/{id}/providers/{pid}``) lives in
``control.web.routes.support``; this module holds the space itself and its member relations.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import not_found
from control.core.models import iso, now
from control.core.schemas import Page
from control.registry import feed, membership
from control.registry.access import READ, fetch, group_access, require_grant, space_access
from control.registry.identity import Principal, require_user_or_root
from control.registry.models import Group, Space, SpaceGroup, SpaceUser, Support
from control.registry.schemas import (
    EffectiveUserOut,
    GroupMemberOut,
    MemberOut,
    MemberRole,
    SpaceCreate,
    SpaceGroupRole,
    SpaceOut,
    SpaceUpdate,
)
from control.web.listing import unique_name
from control.web.routes.groups import creator
from control.web.routes.members import effective_page, list_members, put_member, remove_member
from control.web.routes.support import support_data
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "spaces"


def space_out(space: Space, role: str | None) -> SpaceOut:
    return SpaceOut(id=space.id, name=space.name, role=role, created_at=iso(space.created_at),
                    updated_at=iso(space.updated_at))



def _visible(principal: Principal) -> set[int] | None:
    """Space ids the caller may list; None means all (root)."""
    if principal.is_root:
        return None
    if principal.provider is not None:
        return membership.provider_spaces(principal.provider.id)
    require_user_or_root(principal)
    return membership.user_spaces(principal.user.id)


@route("GET", "/spaces", summary="List the spaces the caller can see", tag=TAG,
       query=paginated_query(), responses={200: Page[SpaceOut]})
def list_spaces(ctx: Context) -> dict[str, Any]:
    ids = _visible(ctx.principal)
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
    unique_name(Space, req.name)
    owner = creator(ctx.principal, req.owner)
    space = Space.create(name=req.name)
    feed.record("space", space.id, "create", {"name": space.name}, space_id=space.id)
    if owner is not None:
        row = SpaceUser.create(space=space, user=owner, role="owner")
        feed.record("space_user", row.id, "create", {"user": owner.id, "role": "owner"},
                    space_id=space.id, user_id=owner.id)
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
    req: SpaceUpdate = ctx.body
    if req.name is not None and req.name != space.name:
        unique_name(Space, req.name, space.id)
        space.name = req.name
        space.updated_at = now()
        space.save()
        feed.record("space", space.id, "update", {"name": space.name}, space_id=space.id)
    return space_out(space, role)


@route("DELETE", "/spaces/{id}", summary="Delete a space (owner); its supports are revoked",
       tag=TAG, responses={204: None})
def delete_space(ctx: Context, id: int) -> None:
    space, _ = space_access(ctx.principal, id, "owner")
    # Each supporting provider gets its own revocation, scoped to it, so it learns the
    # space is gone even though the space leaves its region with this very delete.
    for support in Support.select().where(Support.space == space.id):
        feed.record("support", support.id, "delete", support_data(space, support.provider_id, None),
                    space_id=space.id, provider_id=support.provider_id)
    feed.record("space", space.id, "delete", {"name": space.name}, space_id=space.id)
    space.delete_instance(recursive=True, delete_nullable=True)


@route("GET", "/spaces/{id}/users", summary="List a space's direct users", tag=TAG,
       query=paginated_query(), responses={200: Page[MemberOut]})
def list_space_users(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    return list_members(SpaceUser, id, ctx)


@route("PUT", "/spaces/{id}/users/{uid}", summary="Add a user to a space or change its role (admin)",
       tag=TAG, body=MemberRole, responses={200: MemberOut, 201: MemberOut})
def put_space_user(ctx: Context, id: int, uid: int) -> Reply:
    _, role = space_access(ctx.principal, id, "admin")
    return put_member(SpaceUser, id, uid, ctx.body.role, ctx, role)


@route("DELETE", "/spaces/{id}/users/{uid}", summary="Remove a user from a space (admin, or itself)",
       tag=TAG, responses={204: None})
def delete_space_user(ctx: Context, id: int, uid: int) -> None:
    leaving = ctx.principal.user is not None and ctx.principal.user.id == uid
    _, role = space_access(ctx.principal, id, READ if leaving else "admin")
    remove_member(SpaceUser, id, uid, ctx, role)


def group_member_out(group: Group, role: str) -> GroupMemberOut:
    return GroupMemberOut(id=group.id, name=group.name, role=role)


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
    data = {"group": group.id, "role": role}
    if row is None:
        row = SpaceGroup.create(space=space, group=group, role=role)
        feed.record("space_group", row.id, "create", data, space_id=space.id, group_id=group.id)
        return Reply(201, group_member_out(group, role))
    if row.role != role:
        row.role = role
        row.save()
        feed.record("space_group", row.id, "update", data, space_id=space.id, group_id=group.id)
    return Reply(200, group_member_out(group, role))


@route("DELETE", "/spaces/{id}/groups/{gid}", summary="Remove a group from a space (admin)",
       tag=TAG, responses={204: None})
def delete_space_group(ctx: Context, id: int, gid: int) -> None:
    space, actor = space_access(ctx.principal, id, "admin")
    row = SpaceGroup.get_or_none(SpaceGroup.space == space.id, SpaceGroup.group == gid)
    if row is None:
        raise not_found("member group", gid)
    require_grant(ctx.principal, actor, row.role)
    feed.record("space_group", row.id, "delete", {"group": gid}, space_id=space.id, group_id=gid)
    row.delete_instance()


@route("GET", "/spaces/{id}/effective_users",
       summary="Users of the space directly or through (nested) member groups", tag=TAG,
       query=paginated_query(), responses={200: Page[EffectiveUserOut]})
def list_space_effective_users(ctx: Context, id: int) -> dict[str, Any]:
    space_access(ctx.principal, id)
    return effective_page(membership.effective_space_users(id), ctx)

"""Groups: users and nested child groups as members; the creator owns the group.

Nesting a group under another makes the child's effective members effective members
of the parent; a nesting that would close a loop is refused with 409.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import conflict, forbidden, invalid, not_found
from control.core.models import iso, now
from control.core.schemas import Page
from control.registry import feed, membership
from control.registry.access import READ, group_access
from control.registry.identity import Principal, require_user_or_root
from control.registry.models import Group, GroupChild, GroupUser, SpaceGroup, User
from control.registry.schemas import (
    EffectiveUserOut,
    GroupCreate,
    GroupMemberOut,
    GroupOut,
    GroupUpdate,
    MemberOut,
    MemberRole,
)
from control.web.listing import unique_name
from control.web.routes.members import effective_page, list_members, put_member, remove_member
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "groups"


def group_out(group: Group, role: str | None) -> GroupOut:
    return GroupOut(id=group.id, name=group.name, role=role, created_at=iso(group.created_at),
                    updated_at=iso(group.updated_at))


def visible_groups(principal: Principal) -> tuple[set[int] | None, dict[int, str]]:
    """Ids the caller may list (None: all) and its direct roles in them."""
    if principal.is_root:
        return None, {}
    if principal.provider is not None:
        return membership.provider_region(principal.provider.id)[1], {}
    require_user_or_root(principal)
    uid = principal.user.id
    direct = {r.group_id: r.role for r in GroupUser.select().where(GroupUser.user == uid)}
    return membership.user_groups(uid), direct



@route("GET", "/groups", summary="List the groups the caller can see", tag=TAG,
       query=paginated_query(), responses={200: Page[GroupOut]})
def list_groups(ctx: Context) -> dict[str, Any]:
    ids, direct = visible_groups(ctx.principal)
    query = Group.select()
    if ids is not None:
        query = query.where(Group.id.in_(list(ids) or [0]))
    member = None if ids is None or ctx.principal.provider is not None else "member"
    return paginate(query, ctx, Group.name, lambda g: group_out(g, direct.get(g.id, member)))


@route("POST", "/groups", summary="Create a group; a user creating it becomes its owner",
       tag=TAG, body=GroupCreate, responses={201: GroupOut})
def create_group(ctx: Context) -> Reply:
    require_user_or_root(ctx.principal)
    req: GroupCreate = ctx.body
    unique_name(Group, req.name)
    owner = creator(ctx.principal, req.owner)
    group = Group.create(name=req.name)
    feed.record("group", group.id, "create", {"name": group.name}, group_id=group.id)
    if owner is not None:
        row = GroupUser.create(group=group, user=owner, role="owner")
        feed.record("group_user", row.id, "create", {"user": owner.id, "role": "owner"},
                    group_id=group.id, user_id=owner.id)
    return Reply(201, group_out(group, "owner" if ctx.principal.user else None),
                 {"Location": f"/api/v1/groups/{group.id}"})


def creator(principal: Principal, owner_id: int | None) -> User | None:
    """The owner of a new group or space: the creating user, or whom root names."""
    if principal.user is not None:
        if owner_id is not None and owner_id != principal.user.id:
            raise forbidden("only the administrator may name another owner")
        return principal.user
    if owner_id is None:
        return None
    user = User.get_or_none(User.id == owner_id)
    if user is None:
        raise invalid(f"owner: user {owner_id} does not exist")
    return user


@route("GET", "/groups/{id}", summary="Show a group", tag=TAG, responses={200: GroupOut})
def show_group(ctx: Context, id: int) -> GroupOut:
    group, role = group_access(ctx.principal, id)
    return group_out(group, role)


@route("PATCH", "/groups/{id}", summary="Rename a group (admin)", tag=TAG, body=GroupUpdate,
       responses={200: GroupOut})
def update_group(ctx: Context, id: int) -> GroupOut:
    group, role = group_access(ctx.principal, id, "admin")
    req: GroupUpdate = ctx.body
    if req.name is not None and req.name != group.name:
        unique_name(Group, req.name, group.id)
        group.name = req.name
        group.updated_at = now()
        group.save()
        feed.record("group", group.id, "update", {"name": group.name}, group_id=group.id)
    return group_out(group, role)


@route("DELETE", "/groups/{id}", summary="Delete a group (owner)", tag=TAG,
       responses={204: None})
def delete_group(ctx: Context, id: int) -> None:
    group, _ = group_access(ctx.principal, id, "owner")
    # Record the relations that go with it, so providers whose spaces held the group
    # (and parents' readers) learn it left them.
    for sg in SpaceGroup.select().where(SpaceGroup.group == group.id):
        feed.record("space_group", sg.id, "delete", {"group": group.id},
                    space_id=sg.space_id, group_id=group.id)
    for link in GroupChild.select().where(GroupChild.child == group.id):
        feed.record("group_child", link.id, "delete", {"child": group.id},
                    group_id=link.parent_id)
    feed.record("group", group.id, "delete", {"name": group.name}, group_id=group.id)
    group.delete_instance(recursive=True, delete_nullable=True)


@route("GET", "/groups/{id}/users", summary="List a group's direct users", tag=TAG,
       query=paginated_query(), responses={200: Page[MemberOut]})
def list_group_users(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    return list_members(GroupUser, id, ctx)


@route("PUT", "/groups/{id}/users/{uid}", summary="Add a user to a group or change its role",
       tag=TAG, body=MemberRole, responses={200: MemberOut, 201: MemberOut})
def put_group_user(ctx: Context, id: int, uid: int) -> Reply:
    _, role = group_access(ctx.principal, id, "admin")
    return put_member(GroupUser, id, uid, ctx.body.role, ctx, role)


@route("DELETE", "/groups/{id}/users/{uid}", summary="Remove a user from a group", tag=TAG,
       responses={204: None})
def delete_group_user(ctx: Context, id: int, uid: int) -> None:
    leaving = ctx.principal.user is not None and ctx.principal.user.id == uid
    _, role = group_access(ctx.principal, id, READ if leaving else "admin")
    remove_member(GroupUser, id, uid, ctx, role)


def child_out(group: Group) -> GroupMemberOut:
    return GroupMemberOut(id=group.id, name=group.name, role=None)


@route("GET", "/groups/{id}/children", summary="List a group's direct child groups", tag=TAG,
       query=paginated_query(), responses={200: Page[GroupMemberOut]})
def list_children(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    query = (GroupChild.select(GroupChild, Group)
             .join(Group, on=(GroupChild.child == Group.id)).where(GroupChild.parent == id))
    return paginate(query, ctx, Group.name, lambda link: child_out(link.child))


@route("PUT", "/groups/{id}/children/{gid}",
       summary="Nest a group (admin of the parent, member of the child); 409 on a cycle",
       tag=TAG, responses={200: GroupMemberOut, 201: GroupMemberOut})
def put_child(ctx: Context, id: int, gid: int) -> Reply:
    parent, _ = group_access(ctx.principal, id, "admin")
    child, _ = group_access(ctx.principal, gid, READ)
    if GroupChild.select().where(GroupChild.parent == parent.id,
                                 GroupChild.child == child.id).exists():
        return Reply(200, child_out(child))
    feed.serialise()  # no concurrent nesting between the cycle check and the insert
    if membership.would_cycle(parent.id, child.id):
        raise conflict(f"nesting group {child.id} under group {parent.id} would make a cycle")
    link = GroupChild.create(parent=parent, child=child)
    feed.record("group_child", link.id, "create", {"child": child.id}, group_id=parent.id)
    return Reply(201, child_out(child))


@route("DELETE", "/groups/{id}/children/{gid}", summary="Un-nest a child group (admin)",
       tag=TAG, responses={204: None})
def delete_child(ctx: Context, id: int, gid: int) -> None:
    parent, _ = group_access(ctx.principal, id, "admin")
    link = GroupChild.get_or_none(GroupChild.parent == parent.id, GroupChild.child == gid)
    if link is None:
        raise not_found("child group", gid)
    feed.record("group_child", link.id, "delete", {"child": gid}, group_id=parent.id)
    link.delete_instance()


@route("GET", "/groups/{id}/effective_users",
       summary="Users of the group directly or through nested child groups", tag=TAG,
       query=paginated_query(), responses={200: Page[EffectiveUserOut]})
def list_group_effective_users(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    return effective_page(membership.effective_group_users(id), ctx)

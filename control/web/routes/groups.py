"""Groups: users and nested child groups as members; the creator owns the group.

Nesting a group under another makes the child's effective members effective members
of the parent; a nesting that would close a loop is refused with 409. The effective
relations (Onezone's meaning: reached through nested groups) have their own routes:
effective users, parents and effective parents, effective children, and every chain of
intermediaries between the group and one of its users.
"""

from __future__ import annotations

from typing import Any

from control.core.errors import not_found
from control.core.models import iso
from control.core.schemas import Page
from control.registry import groups, members, membership
from control.registry.access import READ, fetch, group_access, only_visible_groups, visible_groups
from control.registry.identity import require_user_or_root
from control.registry.models import Group, GroupChild, GroupUser, User
from control.registry.schemas import (
    ChainLink,
    EffectiveUserOut,
    GroupCreate,
    GroupLinkOut,
    GroupMemberOut,
    GroupOut,
    GroupUpdate,
    MemberOut,
    MemberRole,
)
from control.web.listing import (
    chain_page,
    effective_page,
    group_member_out,
    links_page,
    list_members,
    member_out,
    page_query,
)
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "groups"


def group_out(group: Group, role: str | None) -> GroupOut:
    return GroupOut(id=group.id, name=group.name, role=role, created_at=iso(group.created_at),
                    updated_at=iso(group.updated_at))


@route("GET", "/groups", summary="List the groups the caller can see", tag=TAG,
       query=paginated_query(), responses={200: Page[GroupOut]})
def list_groups(ctx: Context) -> dict[str, Any]:
    ids = visible_groups(ctx.principal)
    user = ctx.principal.user
    direct = membership.direct_group_roles(user.id) if user is not None else {}
    query = Group.select()
    if ids is not None:
        query = query.where(Group.id.in_(list(ids) or [0]))
    member = "member" if user is not None else None
    return paginate(query, ctx, Group.name, lambda g: group_out(g, direct.get(g.id, member)))


@route("POST", "/groups", summary="Create a group; a user creating it becomes its owner",
       tag=TAG, body=GroupCreate, responses={201: GroupOut})
def create_group(ctx: Context) -> Reply:
    require_user_or_root(ctx.principal)
    req: GroupCreate = ctx.body
    group = groups.create(ctx.principal, req.name, req.owner)
    return Reply(201, group_out(group, "owner" if ctx.principal.user else None),
                 {"Location": f"/api/v1/groups/{group.id}"})


@route("GET", "/groups/{id}", summary="Show a group", tag=TAG, responses={200: GroupOut})
def show_group(ctx: Context, id: int) -> GroupOut:
    group, role = group_access(ctx.principal, id)
    return group_out(group, role)


@route("PATCH", "/groups/{id}", summary="Rename a group (admin)", tag=TAG, body=GroupUpdate,
       responses={200: GroupOut})
def update_group(ctx: Context, id: int) -> GroupOut:
    group, role = group_access(ctx.principal, id, "admin")
    groups.rename(group, ctx.body.name)
    return group_out(group, role)


@route("DELETE", "/groups/{id}", summary="Delete a group (owner)", tag=TAG,
       responses={204: None})
def delete_group(ctx: Context, id: int) -> None:
    group, _ = group_access(ctx.principal, id, "owner")
    groups.delete(group)


@route("GET", "/groups/{id}/users", summary="List a group's direct users", tag=TAG,
       query=paginated_query(), responses={200: Page[MemberOut]})
def list_group_users(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    return list_members(GroupUser, id, ctx)


@route("PUT", "/groups/{id}/users/{uid}", summary="Add a user to a group or change its role",
       tag=TAG, body=MemberRole, responses={200: MemberOut, 201: MemberOut})
def put_group_user(ctx: Context, id: int, uid: int) -> Reply:
    _, role = group_access(ctx.principal, id, "admin")
    user, added = members.put(ctx.principal, role, GroupUser, id, uid, ctx.body.role)
    return Reply(201 if added else 200, member_out(user, ctx.body.role))


@route("DELETE", "/groups/{id}/users/{uid}", summary="Remove a user from a group", tag=TAG,
       responses={204: None})
def delete_group_user(ctx: Context, id: int, uid: int) -> None:
    leaving = ctx.principal.user is not None and ctx.principal.user.id == uid
    _, role = group_access(ctx.principal, id, READ if leaving else "admin")
    members.remove(ctx.principal, role, GroupUser, id, uid)


@route("GET", "/groups/{id}/children", summary="List a group's direct child groups", tag=TAG,
       query=paginated_query(), responses={200: Page[GroupMemberOut]})
def list_children(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    query = (GroupChild.select(GroupChild, Group)
             .join(Group, on=(GroupChild.child == Group.id)).where(GroupChild.parent == id))
    return paginate(query, ctx, Group.name, lambda link: group_member_out(link.child, None))


@route("PUT", "/groups/{id}/children/{gid}",
       summary="Nest a group (admin of the parent, member of the child); 409 on a cycle",
       tag=TAG, responses={200: GroupMemberOut, 201: GroupMemberOut})
def put_child(ctx: Context, id: int, gid: int) -> Reply:
    parent, _ = group_access(ctx.principal, id, "admin")
    child, _ = group_access(ctx.principal, gid, READ)
    added = groups.nest(parent, child)
    return Reply(201 if added else 200, group_member_out(child, None))


@route("DELETE", "/groups/{id}/children/{gid}", summary="Un-nest a child group (admin)",
       tag=TAG, responses={204: None})
def delete_child(ctx: Context, id: int, gid: int) -> None:
    parent, _ = group_access(ctx.principal, id, "admin")
    groups.unnest(parent, gid)


@route("GET", "/groups/{id}/effective_users",
       summary="Users of the group directly or through nested child groups", tag=TAG,
       query=paginated_query(), responses={200: Page[EffectiveUserOut]})
def list_group_effective_users(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    return effective_page(membership.EffectiveUsers("group", id), ctx)


@route("GET", "/groups/{id}/effective_users/{uid}/membership",
       summary="Every chain of intermediaries through which the user belongs to the group: "
               "[group, child group, ..., user]", tag=TAG, query=page_query(),
       responses={200: Page[list[ChainLink]]})
def group_membership_chains(ctx: Context, id: int, uid: int) -> dict[str, Any]:
    group, _ = group_access(ctx.principal, id)
    user = fetch(User, uid)
    chains = membership.Chains.of_group(group.id, user.id)
    if chains.total == 0:
        raise not_found(f"member of group {group.id}: user", uid)
    return chain_page(chains, ChainLink(type="group", id=group.id, name=group.name), user, ctx)


@route("GET", "/groups/{id}/parents", summary="The groups this group is directly nested in (as far as the "
       "caller sees them)", tag=TAG, query=page_query(names=True), responses={200: Page[GroupMemberOut]})
def list_parents(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    ids = only_visible_groups(ctx.principal, membership.parents(id))
    query = Group.select().where(Group.id.in_(sorted(ids) or [0]))
    return paginate(query, ctx, Group.name, lambda g: group_member_out(g, None))


@route("GET", "/groups/{id}/effective_parents",
       summary="Every group this group is nested in, directly or through other groups (as far as "
               "the caller sees them)", tag=TAG, query=page_query(names=True), responses={200: Page[GroupLinkOut]})
def list_effective_parents(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    ids = only_visible_groups(ctx.principal, membership.ancestors([id]) - {id})
    return links_page(ids, membership.parents(id), ctx)


@route("GET", "/groups/{id}/effective_children",
       summary="Every group nested in this group, directly or through other groups", tag=TAG,
       query=page_query(names=True), responses={200: Page[GroupLinkOut]})
def list_effective_children(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    return links_page(membership.descendants([id]) - {id}, membership.children(id), ctx)

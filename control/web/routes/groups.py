"""Groups: users and nested child groups as members; the creator owns the group.

Nesting a group under another makes the child's effective members effective members
of the parent; a nesting that would close a loop is refused with 409. The effective
relations (Onezone's meaning: reached through nested groups) have their own routes:
effective users, parents and effective parents, effective children, and every chain of
intermediaries between the group and one of its users. The routes a group shares with
a space (itself, its users, its effective users) are declared by ``control.web.owned``.
"""

from __future__ import annotations

from typing import Any

from control.core.schemas import Page
from control.registry import groups, membership
from control.registry.access import READ, group_access, only_visible_groups, visible_groups
from control.registry.models import Group, GroupChild
from control.registry.schemas import GroupCreate, GroupLinkOut, GroupMemberOut, GroupOut, GroupUpdate
from control.web.listing import group_member_out, links_page, page_query, visible_rows
from control.web.owned import OwnedKind, owned_routes
from control.web.routing import Context, Reply, paginate, paginated_query, route

TAG = "groups"
GROUPS = OwnedKind(Group, GroupOut, GroupCreate, GroupUpdate, group_access, groups.delete,
                   membership.Chains.of_group, delete_note="", through="nested child groups",
                   chain="group, child group, ..., user")


@route("GET", "/groups", summary="List the groups the caller can see", tag=TAG,
       query=paginated_query(), responses={200: Page[GroupOut]})
def list_groups(ctx: Context) -> dict[str, Any]:
    user = ctx.principal.user
    query = visible_rows(Group, visible_groups(ctx.principal))
    direct = membership.direct_group_roles(user.id) if user is not None else {}
    member = "member" if user is not None else None
    return paginate(query, ctx, Group.name, lambda g: GROUPS.to_out(g, direct.get(g.id, member)))


owned_routes(GROUPS)


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


@route("GET", "/groups/{id}/parents", summary="The groups this group is directly nested in (as far as the "
       "caller sees them)", tag=TAG, query=page_query(names=True), responses={200: Page[GroupMemberOut]})
def list_parents(ctx: Context, id: int) -> dict[str, Any]:
    group_access(ctx.principal, id)
    ids = only_visible_groups(ctx.principal, membership.parents(id))
    return paginate(visible_rows(Group, ids), ctx, Group.name, lambda g: group_member_out(g, None))


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

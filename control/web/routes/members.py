"""User membership of groups and spaces: one implementation for both relations.

Groups and spaces keep their users the same way (a row with a role), so listing,
granting, removing and showing effective members live here, parameterised by the
relation's model and the feed entity name.
"""

from __future__ import annotations

from typing import Any

import peewee

from control.core.errors import not_found
from control.registry import feed
from control.registry.access import fetch, keep_an_owner, require_grant
from control.registry.models import GroupUser, SpaceUser, User
from control.registry.schemas import EffectiveUserOut, MemberOut
from control.web.listing import page_list
from control.web.routing import Context, Reply, paginate


def member_out(user: User, role: str) -> MemberOut:
    return MemberOut(id=user.id, username=user.username, full_name=user.full_name, role=role)


def _relation(model: type[GroupUser] | type[SpaceUser]) -> tuple[peewee.Field, str, str]:
    """(parent field, scope column for the feed, feed entity)."""
    if model is GroupUser:
        return GroupUser.group, "group_id", "group_user"
    return SpaceUser.space, "space_id", "space_user"


def list_members(model: type[GroupUser] | type[SpaceUser], parent_id: int,
                 ctx: Context) -> dict[str, Any]:
    parent, _, _ = _relation(model)
    query = model.select(model, User).join(User).where(parent == parent_id)
    return paginate(query, ctx, User.username, lambda r: member_out(r.user, r.role))


def put_member(model: type[GroupUser] | type[SpaceUser], parent_id: int, user_id: int,
               role: str, ctx: Context, actor_role: str | None) -> Reply:
    """Add the user with the role, or change its role: 201 when added, 200 when changed."""
    parent, scope, entity = _relation(model)
    user = fetch(User, user_id)
    row = model.get_or_none(parent == parent_id, model.user == user.id)
    require_grant(ctx.principal, actor_role, role, row.role if row else None)
    keep_an_owner(model, parent, parent_id, user, role)
    data = {"user": user.id, "role": role}
    if row is None:
        row = model.create(**{parent.name: parent_id}, user=user, role=role)
        feed.record(entity, row.id, "create", data, user_id=user.id, **{scope: parent_id})
        return Reply(201, member_out(user, role))
    if row.role != role:
        row.role = role
        row.save()
        feed.record(entity, row.id, "update", data, user_id=user.id, **{scope: parent_id})
    return Reply(200, member_out(user, role))


def remove_member(model: type[GroupUser] | type[SpaceUser], parent_id: int, user_id: int,
                  ctx: Context, actor_role: str | None) -> None:
    """Admins remove plain members; owners anyone; any member may leave by itself."""
    parent, scope, entity = _relation(model)
    user = fetch(User, user_id)
    row = model.get_or_none(parent == parent_id, model.user == user.id)
    if row is None:
        raise not_found("member", user_id)
    leaving = ctx.principal.user is not None and ctx.principal.user.id == user.id
    if not leaving:
        require_grant(ctx.principal, actor_role, row.role)
    keep_an_owner(model, parent, parent_id, user, None)
    feed.record(entity, row.id, "delete", {"user": user.id}, user_id=user.id, **{scope: parent_id})
    row.delete_instance()


def record_user_departures(user_id: int) -> None:
    """Before a user is deleted: one scoped change per membership it leaves, so readers of
    those spaces and groups (providers among them) learn it is gone."""
    for model in (SpaceUser, GroupUser):
        _, scope, entity = _relation(model)
        for row in model.select().where(model.user == user_id):
            feed.record(entity, row.id, "delete", {"user": user_id}, user_id=user_id,
                        **{scope: getattr(row, scope)})


def effective_page(entries: dict[int, dict[str, Any]], ctx: Context) -> dict[str, Any]:
    users = {u.id: u for u in User.select().where(User.id.in_(list(entries)))} if entries else {}
    items = [EffectiveUserOut(id=uid, username=users[uid].username,
                              full_name=users[uid].full_name, role=e["role"], direct=e["direct"],
                              membership=e["via"])
             for uid, e in sorted(entries.items()) if e["role"] is not None]
    return page_list(items, ctx, lambda i: i.username)

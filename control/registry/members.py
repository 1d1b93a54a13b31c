"""User membership of groups and spaces: one implementation for both relations.

Groups and spaces keep their users the same way (a row with a role), so granting,
changing and removing live here, parameterised by the relation's model; every write
appends its change to the feed, scoped to the group or space and the user.
"""

from __future__ import annotations

import peewee

from control.core.errors import not_found
from control.registry import feed
from control.registry.access import fetch, keep_an_owner, require_grant
from control.registry.identity import Principal
from control.registry.models import GroupUser, SpaceUser, User

Relation = type[GroupUser] | type[SpaceUser]


def relation(model: Relation) -> tuple[peewee.Field, str, str]:
    """(parent field, scope column for the feed, feed entity)."""
    if model is GroupUser:
        return GroupUser.group, "group_id", "group_user"
    return SpaceUser.space, "space_id", "space_user"


def add(model: Relation, parent_id: int, user: User, role: str,
        invite: int | None = None) -> peewee.Model:
    """A new direct membership (the caller checked the user is none yet); ``invite``: the
    invite it was redeemed with, named in the feed."""
    parent, scope, entity = relation(model)
    row = model.create(**{parent.name: parent_id}, user=user, role=role)
    data = {"user": user.id, "role": role} | ({"invite": invite} if invite else {})
    feed.record(entity, row.id, "create", data, user_id=user.id, **{scope: parent_id})
    return row


def put(principal: Principal, actor_role: str | None, model: Relation, parent_id: int,
        user_id: int, role: str) -> tuple[User, bool]:
    """Add the user with the role, or change its role; returns (user, whether it was added)."""
    parent, scope, entity = relation(model)
    user = fetch(User, user_id)
    row = model.get_or_none(parent == parent_id, model.user == user.id)
    require_grant(principal, actor_role, role, row.role if row else None)
    keep_an_owner(model, parent, parent_id, user, role)
    if row is None:
        add(model, parent_id, user, role)
        return user, True
    if row.role != role:
        row.role = role
        row.save()
        feed.record(entity, row.id, "update", {"user": user.id, "role": role}, user_id=user.id,
                    **{scope: parent_id})
    return user, False


def remove(principal: Principal, actor_role: str | None, model: Relation, parent_id: int,
           user_id: int) -> None:
    """Admins remove plain members; owners anyone; any member may leave by itself."""
    parent, scope, entity = relation(model)
    user = fetch(User, user_id)
    row = model.get_or_none(parent == parent_id, model.user == user.id)
    if row is None:
        raise not_found("member", user_id)
    leaving = principal.user is not None and principal.user.id == user.id
    if not leaving:
        require_grant(principal, actor_role, row.role)
    keep_an_owner(model, parent, parent_id, user, None)
    feed.record(entity, row.id, "delete", {"user": user.id}, user_id=user.id, **{scope: parent_id})
    row.delete_instance()


def record_departures(user_id: int) -> None:
    """Before a user is deleted: one scoped change per membership it leaves, so readers of
    those spaces and groups (providers among them) learn it is gone."""
    for model in (SpaceUser, GroupUser):
        _, scope, entity = relation(model)
        for row in model.select().where(model.user == user_id):
            feed.record(entity, row.id, "delete", {"user": user_id}, user_id=user_id,
                        **{scope: getattr(row, scope)})

"""Groups and spaces alike: a named entity that a user owns, created and renamed by one rule.

Both start with their creator (or whom root names) as owner, keep their name unique, and
record each change in the feed scoped to themselves. What happens next differs (groups
nest, spaces get member groups and support), so that stays in ``groups`` and ``spaces``.
"""

from __future__ import annotations

from control.core.models import now
from control.registry import feed, members
from control.registry.access import new_entity_owner
from control.registry.identity import Principal
from control.registry.models import Group, GroupUser, Owned, Space, SpaceUser
from control.registry.names import unique_name

USERS: dict[type[Owned], members.Relation] = {Group: GroupUser, Space: SpaceUser}


def kind(entity: type[Owned] | Owned) -> str:
    """"group" or "space": the feed's entity name and the prefix of its scope column."""
    model = entity if isinstance(entity, type) else type(entity)
    return model.__name__.lower()


def _record(entity: Owned, op: str) -> None:
    feed.record(kind(entity), entity.id, op, {"name": entity.name}, **{f"{kind(entity)}_id": entity.id})


def create(model: type[Owned], principal: Principal, name: str, owner_id: int | None) -> Owned:
    """A new group or space; its owner is the creating user, or whom root names (or none)."""
    unique_name(model, name)
    owner = new_entity_owner(principal, owner_id)
    entity = model.create(name=name)
    _record(entity, "create")
    if owner is not None:
        members.add(USERS[model], entity.id, owner, "owner")
    return entity


def rename(entity: Owned, name: str | None) -> None:
    """No name, or the same one, changes nothing (and records nothing)."""
    if name is None or name == entity.name:
        return
    unique_name(type(entity), name, entity.id)
    entity.name = name
    entity.updated_at = now()
    entity.save()
    _record(entity, "update")


def record_delete(entity: Owned) -> None:
    """The entity's own deletion in the feed (the caller records its relations first)."""
    _record(entity, "delete")

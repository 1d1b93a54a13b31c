"""Spaces: delete, and their member groups with a role each; ``owned`` creates and renames them.

Their users are kept by ``control.registry.members``; provider support by
``control.registry.support``. Every write appends its change to the feed.
"""

from __future__ import annotations

from control.core.errors import not_found
from control.registry import feed, owned, support
from control.registry.access import require_grant
from control.registry.identity import Principal
from control.registry.models import Group, Space, SpaceGroup, Support


def delete(space: Space) -> None:
    # Each supporting provider gets its own revocation, scoped to it, so it learns the
    # space is gone even though the space leaves its region with this very delete.
    support.record_revocations(support.joined().where(Support.space == space.id))
    owned.record_delete(space)
    space.delete_instance(recursive=True, delete_nullable=True)


def add_group(space: Space, group: Group, role: str, invite: int | None = None) -> SpaceGroup:
    row = SpaceGroup.create(space=space, group=group, role=role)
    data = {"group": group.id, "role": role} | ({"invite": invite} if invite else {})
    feed.record("space_group", row.id, "create", data, space_id=space.id, group_id=group.id)
    return row


def set_group_role(row: SpaceGroup, role: str) -> None:
    if row.role == role:
        return
    row.role = role
    row.save()
    feed.record("space_group", row.id, "update", {"group": row.group_id, "role": role},
                space_id=row.space_id, group_id=row.group_id)


def remove_group(principal: Principal, actor_role: str | None, space: Space, group_id: int) -> None:
    """Removing an admin group takes an owner, as taking away an admin role does."""
    row = SpaceGroup.get_or_none(SpaceGroup.space == space.id, SpaceGroup.group == group_id)
    if row is None:
        raise not_found("member group", group_id)
    require_grant(principal, actor_role, row.role)
    feed.record("space_group", row.id, "delete", {"group": group_id}, space_id=space.id,
                group_id=group_id)
    row.delete_instance()

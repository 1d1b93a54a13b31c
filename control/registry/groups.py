"""Groups: delete, and nest one group in another (no cycles); ``owned`` creates and renames them.

Nesting a group under another makes the child's effective members effective members
of the parent; a nesting that would close a loop is refused with 409. Every write
appends its change to the feed, scoped so the group's readers see it.
"""

from __future__ import annotations

from control.core.errors import conflict, not_found
from control.registry import feed, membership, owned
from control.registry.models import Group, GroupChild, SpaceGroup


def delete(group: Group) -> None:
    # Record the relations that go with it, so providers whose spaces held the group
    # (and parents' readers) learn it left them.
    for sg in SpaceGroup.select().where(SpaceGroup.group == group.id):
        feed.record("space_group", sg.id, "delete", {"group": group.id},
                    space_id=sg.space_id, group_id=group.id)
    for link in GroupChild.select().where(GroupChild.child == group.id):
        feed.record("group_child", link.id, "delete", {"child": group.id},
                    group_id=link.parent_id)
    owned.record_delete(group)
    group.delete_instance(recursive=True, delete_nullable=True)


def nest(parent: Group, child: Group, invite: int | None = None) -> bool:
    """Nest ``child`` under ``parent``; False when it already is. 409 on a cycle."""
    if GroupChild.select().where(GroupChild.parent == parent.id,
                                 GroupChild.child == child.id).exists():
        return False
    feed.serialise()  # no concurrent nesting between the cycle check and the insert
    if membership.would_cycle(parent.id, child.id):
        raise conflict(f"nesting group {child.id} under group {parent.id} would make a cycle")
    link = GroupChild.create(parent=parent, child=child)
    data = {"child": child.id} | ({"invite": invite} if invite else {})
    feed.record("group_child", link.id, "create", data, group_id=parent.id)
    return True


def unnest(parent: Group, child_id: int) -> None:
    link = GroupChild.get_or_none(GroupChild.parent == parent.id, GroupChild.child == child_id)
    if link is None:
        raise not_found("child group", child_id)
    feed.record("group_child", link.id, "delete", {"child": child_id}, group_id=parent.id)
    link.delete_instance()

"""Effective membership: who belongs to a group or a space through nested groups.

A child group's members are members of its parent, so a user reaches a space through
any chain ``space <- group <- child <- ... <- user``. Roles follow one rule:

* a user's role in a **group** is its direct role there, or ``member`` when it only
  reaches the group through a child group (a child's members gain no admin rights in
  the parent);
* a user's role in a **space** is the highest of its direct role and the role of every
  group of the space it is an effective member of (a group's role in the space applies
  to all the group's effective members).

The graph is walked level by level with one query per level, so the cost grows with
the nesting depth, not the number of members.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import peewee

from control.registry.models import GroupChild, GroupUser, Provider, SpaceGroup, SpaceUser, Support

RANK = {"member": 1, "admin": 2, "owner": 3}


def best(*roles: str | None) -> str | None:
    present = [r for r in roles if r]
    return max(present, key=RANK.__getitem__) if present else None


def _closure(group_ids: Iterable[int], step: peewee.Field, back: peewee.Field) -> set[int]:
    seen = set(group_ids)
    frontier = set(seen)
    while frontier:
        rows = GroupChild.select(step).where(back.in_(list(frontier)))
        frontier = {getattr(r, step.name + "_id") for r in rows} - seen
        seen |= frontier
    return seen


def descendants(group_ids: Iterable[int]) -> set[int]:
    """The groups and every group nested below them."""
    return _closure(group_ids, GroupChild.child, GroupChild.parent)


def ancestors(group_ids: Iterable[int]) -> set[int]:
    """The groups and every group they are nested in."""
    return _closure(group_ids, GroupChild.parent, GroupChild.child)


def would_cycle(parent_id: int, child_id: int) -> bool:
    """Nesting ``child`` under ``parent`` closes a loop when parent is child or below it."""
    return parent_id in descendants([child_id])


def user_groups(user_id: int) -> set[int]:
    """Every group the user is an effective member of."""
    direct = [r.group_id for r in GroupUser.select(GroupUser.group).where(GroupUser.user == user_id)]
    return ancestors(direct) if direct else set()


def direct_group_roles(user_id: int) -> dict[int, str]:
    """group id -> the user's own role there (not the groups it reaches through children)."""
    return {r.group_id: r.role for r in GroupUser.select().where(GroupUser.user == user_id)}


def group_role(user_id: int, group_id: int) -> str | None:
    row = GroupUser.get_or_none(GroupUser.group == group_id, GroupUser.user == user_id)
    if row is not None:
        return row.role
    return "member" if group_id in user_groups(user_id) else None


def space_role(user_id: int, space_id: int) -> str | None:
    row = SpaceUser.get_or_none(SpaceUser.space == space_id, SpaceUser.user == user_id)
    direct = row.role if row is not None else None
    if direct == "owner":
        return direct
    groups = user_groups(user_id)
    if not groups:
        return direct
    via = SpaceGroup.select(SpaceGroup.role).where(SpaceGroup.space == space_id,
                                                   SpaceGroup.group.in_(list(groups)))
    return best(direct, *(r.role for r in via))


def user_spaces(user_id: int) -> set[int]:
    """Spaces the user is an effective member of."""
    spaces = {r.space_id for r in SpaceUser.select(SpaceUser.space).where(SpaceUser.user == user_id)}
    groups = user_groups(user_id)
    if groups:
        spaces |= {r.space_id for r in SpaceGroup.select(SpaceGroup.space)
                   .where(SpaceGroup.group.in_(list(groups)))}
    return spaces


def group_paths(roots: Iterable[int]) -> dict[int, list[int]]:
    """For every group below ``roots``: one shortest chain of group ids from a root to it."""
    paths = {g: [g] for g in roots}
    frontier = list(paths)
    while frontier:
        rows = GroupChild.select(GroupChild.parent, GroupChild.child).where(
            GroupChild.parent.in_(frontier)).order_by(GroupChild.parent, GroupChild.child)
        nxt = []
        for r in rows:
            if r.child_id not in paths:
                paths[r.child_id] = paths[r.parent_id] + [r.child_id]
                nxt.append(r.child_id)
        frontier = nxt
    return paths


def effective_group_users(group_id: int) -> dict[int, dict[str, Any]]:
    """user id -> {"role", "direct", "via": [chains of group ids below this group]}."""
    out: dict[int, dict[str, Any]] = {}
    for r in GroupUser.select().where(GroupUser.group == group_id):
        out[r.user_id] = {"role": r.role, "direct": True, "via": []}
    paths = group_paths([group_id])
    nested = [g for g in paths if g != group_id]
    if nested:
        for r in GroupUser.select().where(GroupUser.group.in_(nested)).order_by(GroupUser.id):
            entry = out.setdefault(r.user_id, {"role": "member", "direct": False, "via": []})
            entry["via"].append(paths[r.group_id][1:])
    return out


def effective_space_users(space_id: int) -> dict[int, dict[str, Any]]:
    """user id -> {"role", "direct", "via": [chains of group ids from the space down]}."""
    out: dict[int, dict[str, Any]] = {}
    for r in SpaceUser.select().where(SpaceUser.space == space_id):
        out[r.user_id] = {"role": r.role, "direct": True, "via": []}
    for sg in SpaceGroup.select().where(SpaceGroup.space == space_id).order_by(SpaceGroup.id):
        paths = group_paths([sg.group_id])
        rows = GroupUser.select().where(GroupUser.group.in_(list(paths))).order_by(GroupUser.id)
        for r in rows:
            entry = out.setdefault(r.user_id, {"role": None, "direct": False, "via": []})
            entry["role"] = best(entry["role"], sg.role)
            entry["via"].append(paths[r.group_id])
    return out


def space_groups_closure(space_ids: Iterable[int]) -> set[int]:
    """Every group that is a direct or nested member of the spaces."""
    ids = list(space_ids)
    if not ids:
        return set()
    direct = [r.group_id for r in SpaceGroup.select(SpaceGroup.group).where(SpaceGroup.space.in_(ids))]
    return descendants(direct)


def provider_spaces(provider_id: int) -> set[int]:
    return {r.space_id for r in Support.select(Support.space).where(Support.provider == provider_id)}


def provider_groups(provider_id: int) -> set[int]:
    """The groups in a provider's region: those of the spaces it supports, nested ones too."""
    return space_groups_closure(provider_spaces(provider_id))


def provider_region(provider_id: int) -> tuple[set[int], set[int], set[int]]:
    """A provider's region of interest: (spaces it supports, their groups, their users)."""
    spaces = provider_spaces(provider_id)
    groups = space_groups_closure(spaces)
    users: set[int] = set()
    if spaces:
        users |= {r.user_id for r in SpaceUser.select(SpaceUser.user)
                  .where(SpaceUser.space.in_(list(spaces)))}
    if groups:
        users |= {r.user_id for r in GroupUser.select(GroupUser.user)
                  .where(GroupUser.group.in_(list(groups)))}
    return spaces, groups, users


def upload_targets(space_id: int) -> list[dict[str, Any]]:
    """Providers supporting the space and where their storage takes uploads.

    For the dispatcher: each entry's ``path`` is the space's directory on that storage
    (``storage_path/<space id>``), or None when the provider declared no storage.
    """
    rows = (Provider.select(Provider, Support.size).join(Support)
            .where(Support.space == space_id).order_by(Provider.id).objects())
    out = []
    for p in rows:
        path = f"{p.storage_path.rstrip('/')}/{space_id}" if p.storage_path else None
        out.append({"provider_id": p.id, "name": p.name, "domain": p.domain,
                    "sftp_host": p.sftp_host, "sftp_port": p.sftp_port, "sftp_user": p.sftp_user,
                    "storage_path": p.storage_path, "path": path, "size": p.size})
    return out

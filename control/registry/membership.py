"""Effective membership: who belongs to a group or a space through nested groups.

A child group's members are members of its parent, so a user reaches a space through
any chain ``space <- group <- child <- ... <- user``. Roles follow one rule:

* a user's role in a **group** is its direct role there, or ``member`` when it only
  reaches the group through a child group (a child's members gain no admin rights in
  the parent);
* a user's role in a **space** is the highest of its direct role and the role of every
  group of the space it is an effective member of (a group's role in the space applies
  to all the group's effective members).

Closures over the group graph are one recursive query each (``WITH RECURSIVE``, on
SQLite and PostgreSQL alike), so deep nesting costs one round trip, not one per level.
A space's or group's effective users (``EffectiveUsers``) are counted and paged by the
database, with roles and chains worked out for one page; chains of intermediaries
(``Chains``) are counted per group over the groups that lie on some path, so a page
never enumerates them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import peewee

from control.core.db import database
from control.registry.models import Group, GroupChild, GroupUser, Provider, SpaceGroup, SpaceUser, Support, User

RANK = {"member": 1, "admin": 2, "owner": 3}


def best(*roles: str | None) -> str | None:
    present = [r for r in roles if r]
    return max(present, key=RANK.__getitem__) if present else None


CHUNK = 5000  # ids per IN (...) list: far below SQLite's limit on bound parameters


def chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    """Sorted ids in slices small enough for one ``IN (...)`` list."""
    ordered = sorted(set(ids))
    for i in range(0, len(ordered), CHUNK):
        yield ordered[i:i + CHUNK]


def _closure(group_ids: Iterable[int], step: peewee.Field, back: peewee.Field) -> set[int]:
    """The groups and every group reached from them along ``back -> step`` links."""
    seen = set(group_ids)
    for part in chunks(seen):
        base = (GroupChild.select(step.alias("gid")).where(back.in_(part))
                .cte("walk", recursive=True, columns=("gid",)))
        link = GroupChild.alias()
        further = link.select(getattr(link, step.name)).join(
            base, on=(getattr(link, back.name) == base.c.gid))
        walk = base.union(further)  # UNION, not UNION ALL: each group once, and it ends
        seen |= {gid for (gid,) in walk.select_from(walk.c.gid).tuples()}
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


def children_within(groups: set[int]) -> dict[int, list[int]]:
    """parent -> its children (ascending), for the nestings whose both ends are in ``groups``."""
    adj: dict[int, list[int]] = {g: [] for g in groups}
    for part in chunks(groups):
        rows = GroupChild.select(GroupChild.parent, GroupChild.child).where(GroupChild.parent.in_(part))
        for parent, child in rows.tuples():
            if child in adj:
                adj[parent].append(child)
    for kids in adj.values():
        kids.sort()
    return adj


def shortest_paths(roots: Iterable[int], adj: dict[int, list[int]]) -> dict[int, list[int]]:
    """For every group below ``roots`` in ``adj``: one shortest chain from a root to it.

    Level by level, parents and children in id order, so ties always break the same way.
    """
    paths = {g: [g] for g in roots}
    frontier = sorted(paths)
    while frontier:
        nxt = []
        for g in frontier:
            for c in adj.get(g, ()):
                if c not in paths:
                    paths[c] = paths[g] + [c]
                    nxt.append(c)
        frontier = sorted(nxt)
    return paths


def _walk_down(roots: peewee.Query) -> peewee.Query:
    """SELECT of the ``roots`` group ids and every group nested below them (one recursive query)."""
    base = roots.cte("walk", recursive=True, columns=("gid",))
    link = GroupChild.alias()
    walk = base.union(link.select(link.child).join(base, on=(link.parent == base.c.gid)))
    return walk.select_from(walk.c.gid)


class EffectiveUsers:
    """The users of a space or a group, directly or through nested groups, as pages.

    The members are counted, filtered by name and paged by the database (one query over
    every member, nothing per member in Python); roles and chains are then worked out for
    the users of the page only. A user's role in a space is the highest of its direct
    role and the roles of the space's groups it reaches; in a group it is its direct role
    or ``member``. ``via`` holds, per (member group, group the user is in), one shortest
    chain of group ids: from the space's group down, or from just below the group down.
    """

    def __init__(self, kind: str, ident: int) -> None:
        self.kind, self.ident = kind, ident
        if kind == "space":
            self.direct_rows = SpaceUser.select(SpaceUser.user, SpaceUser.role).where(SpaceUser.space == ident)
            self.links = [(r.group_id, r.role) for r in SpaceGroup.select(SpaceGroup.group, SpaceGroup.role)
                          .where(SpaceGroup.space == ident).order_by(SpaceGroup.id)]
            roots = SpaceGroup.select(SpaceGroup.group.alias("gid")).where(SpaceGroup.space == ident)
        else:
            self.direct_rows = GroupUser.select(GroupUser.user, GroupUser.role).where(GroupUser.group == ident)
            self.links = [(ident, "member")]
            roots = Group.select(Group.id.alias("gid")).where(Group.id == ident)
        self.groups = _walk_down(roots) if self.links else None

    def _members(self, needle: str | None) -> peewee.ModelSelect:
        ids = self.direct_rows.select(self.direct_rows.model.user)
        if self.groups is not None:
            ids = ids | GroupUser.select(GroupUser.user).where(GroupUser.group.in_(self.groups))
        query = User.select(User.id, User.username, User.full_name).where(User.id.in_(ids))
        return query.where(User.username.contains(needle)) if needle else query

    def page(self, needle: str | None, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many match, the page's users by id with their role, direct flag and chains)."""
        query = self._members(needle)
        total = query.count()
        users = _rows(query.order_by(User.id).limit(limit).offset(offset))
        if not users:
            return total, []
        page = [u for u, _, _ in users]
        direct = dict(_rows(self.direct_rows.where(self.direct_rows.model.user.in_(page))))
        out = {uid: {"id": uid, "username": name, "full_name": full, "role": direct.get(uid),
                     "direct": uid in direct, "via": []} for uid, name, full in users}
        if self.links:
            self._through_groups(out, page)
        return total, [out[u] for u in page]

    def _through_groups(self, out: dict[int, dict[str, Any]], page: list[int]) -> None:
        closure = descendants(g for g, _ in self.links)
        adj = children_within(closure)
        rows = [r for part in chunks(closure)
                for r in _rows(GroupUser.select(GroupUser.id, GroupUser.group, GroupUser.user)
                               .where(GroupUser.group.in_(part), GroupUser.user.in_(page)))]
        rows.sort()  # oldest membership first, as the chains are listed
        for top, role in self.links:
            paths = shortest_paths([top], adj)
            for _, group, user_id in rows:
                if group not in paths or (self.kind == "group" and group == top):
                    continue
                entry = out[user_id]
                entry["role"] = best(entry["role"], role)
                entry["via"].append(paths[group] if self.kind == "space" else paths[group][1:])


def _rows(query: peewee.Query) -> list[tuple[Any, ...]]:
    """Plain tuples straight from the driver: no model instance or row wrapper per row."""
    return list(database.execute(query).fetchall())


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


# --- the effective relations seen from a group or a user -------------------------------


def parents(group_id: int) -> set[int]:
    """The groups this group is directly nested in."""
    return {p for (p,) in GroupChild.select(GroupChild.parent).where(GroupChild.child == group_id).tuples()}


def children(group_id: int) -> set[int]:
    return {c for (c,) in GroupChild.select(GroupChild.child).where(GroupChild.parent == group_id).tuples()}


def user_group_relations(user_id: int) -> list[dict[str, Any]]:
    """Every group the user is an effective member of: {"id", "role", "direct", "via"}.

    ``via`` holds, per group the user is directly in below this one, one shortest chain
    of group ids from just below this group down to it (as ``EffectiveUsers``).
    """
    direct = direct_group_roles(user_id)
    if not direct:
        return []
    reach = ancestors(direct)  # every path from a group down to the user stays inside
    adj = children_within(reach)
    out = []
    for g in sorted(reach):
        paths = shortest_paths([g], adj)
        via = [paths[d][1:] for d in sorted(direct) if d in paths and d != g]
        out.append({"id": g, "role": direct.get(g, "member"), "direct": g in direct, "via": via})
    return out


def user_space_relations(user_id: int) -> list[dict[str, Any]]:
    """Every space the user is an effective member of: {"id", "role", "direct", "via"}.

    The role is the highest of the direct role and those of the space's groups the user
    reaches; ``via`` holds one shortest chain per (member group, group the user is in).
    """
    out: dict[int, dict[str, Any]] = {}
    for r in SpaceUser.select(SpaceUser.space, SpaceUser.role).where(SpaceUser.user == user_id):
        out[r.space_id] = {"id": r.space_id, "role": r.role, "direct": True, "via": []}
    direct = direct_group_roles(user_id)
    if direct:
        reach = ancestors(direct)
        adj = children_within(reach)
        links = [sg for part in chunks(reach)
                 for sg in SpaceGroup.select().where(SpaceGroup.group.in_(part))]
        paths_from: dict[int, dict[int, list[int]]] = {}
        for sg in sorted(links, key=lambda r: r.id):
            if sg.group_id not in paths_from:
                paths_from[sg.group_id] = shortest_paths([sg.group_id], adj)
            paths = paths_from[sg.group_id]
            entry = out.setdefault(sg.space_id, {"id": sg.space_id, "role": None,
                                                 "direct": False, "via": []})
            entry["role"] = best(entry["role"], sg.role)
            entry["via"] += [paths[d] for d in sorted(direct) if d in paths]
    return [out[k] for k in sorted(out)]


USER = -1  # the last link of every chain, in ``Chains``


class Chains:
    """Every chain of intermediaries from a space or a group down to one user.

    A chain is the entity, the groups in between (outermost first) and the user; a direct
    member's chain has no group. Only the groups on some path are loaded; paths are
    counted per group once, so ``total`` and a page cost no enumeration of the rest.
    """

    def __init__(self, top: list[int], direct: bool, user_groups: set[int]) -> None:
        """``top``: the groups right below the entity; ``direct``: the user is a direct member."""
        self.direct = direct
        below = descendants(top) & ancestors(user_groups) if top and user_groups else set()
        self.adj = children_within(below)
        self.top = sorted(g for g in top if g in below)
        self.ends = user_groups
        self.count = self._count()
        self.total = int(direct) + sum(self.count[g] for g in self.top)

    @classmethod
    def of_space(cls, space_id: int, user_id: int) -> Chains:
        top = [r.group_id for r in SpaceGroup.select(SpaceGroup.group).where(SpaceGroup.space == space_id)]
        direct = SpaceUser.select().where(SpaceUser.space == space_id, SpaceUser.user == user_id).exists()
        return cls(top, direct, set(direct_group_roles(user_id)))

    @classmethod
    def of_group(cls, group_id: int, user_id: int) -> Chains:
        groups = set(direct_group_roles(user_id))
        return cls(sorted(children(group_id)), group_id in groups, groups)

    def _options(self, group: int) -> list[int]:
        return ([USER] if group in self.ends else []) + self.adj[group]

    def _count(self) -> dict[int, int]:
        """group -> the number of chains from it down to the user (children first, no recursion)."""
        count: dict[int, int] = {}
        for start in self.adj:
            if start in count:
                continue
            stack = [(start, iter(self.adj[start]))]
            walking = {start}
            while stack:
                g, rest = stack[-1]
                nxt = next((c for c in rest if c not in count and c not in walking), None)
                if nxt is not None:
                    stack.append((nxt, iter(self.adj[nxt])))
                    walking.add(nxt)
                    continue
                count[g] = int(g in self.ends) + sum(count.get(c, 0) for c in self.adj[g])
                stack.pop()
                walking.discard(g)
        return count

    def page(self, offset: int, limit: int) -> list[list[int]]:
        """Chains ``offset`` to ``offset + limit`` as group ids (``USER`` last), in a fixed
        order: the direct membership first, then through groups in id order, depth first."""
        out: list[list[int]] = []
        skip = offset
        path: list[int] = []
        stack = [(([USER] if self.direct else []) + self.top, 0)]
        while stack and len(out) < limit:
            options, i = stack[-1]
            if i >= len(options):
                stack.pop()
                if path:
                    path.pop()
                continue
            stack[-1] = (options, i + 1)
            option = options[i]
            n = 1 if option == USER else self.count[option]
            if skip >= n:
                skip -= n
                continue
            if option == USER:
                out.append([*path, USER])
                continue
            path.append(option)
            stack.append((self._options(option), 0))
        return out

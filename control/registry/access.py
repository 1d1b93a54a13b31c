"""Who may do what on groups, spaces and providers; one place so every route agrees.

Roles rank owner > admin > member (``control.registry.membership.RANK``). The rule per relation:

* **member**: read the entity and its member lists;
* **admin**: also rename it, add or remove plain members and groups, manage support;
* **owner**: also delete it and grant, change or take away admin and owner roles.

Writing data into a space (``WRITE_DATA``: a task's uploads) takes the member role or
above. Who may submit which tasks (grants) is ``control.farm.policy``.

Root may do everything. A stranger gets 403 for reads and writes alike (after a 404
for an unknown id). Any member may leave by itself, but the last owner may not. A
group joins a space (or nests in a group) only by the hand of one of its own members.

A provider token may only read its region of interest: the spaces it supports, the
groups and users in them, and itself; its one write is resizing or revoking its own
support. Root registers and deletes providers; users may read them (to pick one
for support), and a provider may update itself and rotate its token.

Effective roles include the roles reached through nested groups (see
``control.registry.membership``). ``tests/test_permissions.py`` holds the matrix.
"""

from __future__ import annotations

import peewee

from control.core.errors import conflict, forbidden, not_found
from control.registry import membership
from control.registry.identity import Principal
from control.registry.membership import RANK
from control.registry.models import Group, GroupUser, Provider, Space, SpaceUser, User

READ = "member"
# Writing data into a space (a task's pipeline upload) takes this role there. Every role
# writes today (the registry has no read-only role); a viewer role would rank below it.
WRITE_DATA = "member"


def fetch(model: type[peewee.Model], ident: int) -> peewee.Model:
    row = model.get_or_none(model.id == ident)
    if row is None:
        raise not_found(model.__name__.lower(), ident)
    return row


def _check(role: str | None, need: str, what: str) -> None:
    if role is None:
        raise forbidden(f"not a member of this {what}")
    if RANK[role] < RANK[need]:
        raise forbidden(f"needs the {need} role in this {what}; caller is {role}")


def space_access(principal: Principal, space_id: int, need: str = READ) -> tuple[Space, str | None]:
    """The space and the caller's effective role in it (None for root and providers)."""
    space = fetch(Space, space_id)
    if principal.is_root:
        return space, None
    if principal.provider is not None:
        if need == READ and space.id in membership.provider_spaces(principal.provider.id):
            return space, None
        raise forbidden("a provider may only read the spaces it supports")
    if principal.user is None:
        raise forbidden(f"a {principal.kind} token may not do this")
    role = membership.space_role(principal.user.id, space.id)
    _check(role, need, "space")
    return space, role


def group_access(principal: Principal, group_id: int, need: str = READ) -> tuple[Group, str | None]:
    """The group and the caller's effective role in it (None for root and providers)."""
    group = fetch(Group, group_id)
    if principal.is_root:
        return group, None
    if principal.provider is not None:
        if need == READ and group.id in membership.provider_region(principal.provider.id)[1]:
            return group, None
        raise forbidden("a provider may only read the groups of the spaces it supports")
    if principal.user is None:
        raise forbidden(f"a {principal.kind} token may not do this")
    role = membership.group_role(principal.user.id, group.id)
    _check(role, need, "group")
    return group, role


def provider_access(principal: Principal, provider_id: int) -> Provider:
    """The administrator, or the provider itself."""
    provider = fetch(Provider, provider_id)
    if principal.is_root:
        return provider
    if principal.provider is not None and principal.provider.id == provider.id:
        return provider
    raise forbidden("only the administrator or the provider itself may do this")


def require_grant(principal: Principal, actor_role: str | None, *roles: str | None) -> None:
    """Granting, changing or removing an admin or owner role takes an owner (or root)."""
    if principal.is_root:
        return
    if any(r in ("admin", "owner") for r in roles) and actor_role != "owner":
        raise forbidden("only an owner may grant, change or remove the admin and owner roles")


def keep_an_owner(model: type[GroupUser] | type[SpaceUser], parent: peewee.Field,
                  parent_id: int, user: User, new_role: str | None) -> None:
    """The last owner can be neither removed nor demoted: someone must hold the entity."""
    row = model.get_or_none(parent == parent_id, model.user == user.id)
    if row is None or row.role != "owner" or new_role == "owner":
        return
    owners = model.select().where(parent == parent_id, model.role == "owner").count()
    if owners <= 1:
        raise conflict("the last owner cannot be removed or demoted")

"""Who may see what and do what in the registry: the one module every route asks.

Roles rank owner > admin > member (``control.registry.membership.RANK``). One rule
holds for both groups and spaces:

* **member**: read the entity and its member lists;
* **admin**: also rename it, add or remove plain members and groups, issue and revoke
  invites (granting no more than it may grant itself), ask providers for support
  (support tokens) and revoke support;
* **owner**: also delete it and grant, change or take away admin and owner roles.

Writing data into a space (``WRITE_DATA``: a task's uploads) takes the member role or
above. Who may submit which tasks (grants) is ``control.farm.policy``.

Root may do everything. A stranger gets 403 for reads and writes alike (after a 404
for an unknown id). Any member may leave by itself, but the last owner may not. A
group joins a space (or nests in a group) only by the hand of one of its own members.

A provider token may only read its region of interest: the spaces it supports, the
groups and users in them, and itself; its writes are redeeming support tokens (the
provider's consent: a space admin cannot commit its storage) and resizing or revoking
its own support. Root registers and deletes providers; users may read them (to pick one
for support), and a provider may update itself and rotate its token.

*Visibility* is the same rule seen from the other side: the groups, spaces and
changes a caller may list are exactly the ones it could read one by one
(``visible_groups``, ``visible_spaces``, ``audience``). The effective relations follow
it too: a group's parents and ancestors are listed as far as the caller sees them (its
children, like its members, to whoever reads the group), and another user's effective
groups and spaces only where the caller is a member itself. Resources a user owns inside
an optional space (the farm's tasks) follow ``see_owned`` / ``visible_owned`` /
``cancel_owned`` / ``submit_into_space``, so the farm asks here instead of keeping its own copy.

Effective roles include the roles reached through nested groups (see
``control.registry.membership``). ``tests/test_permissions.py`` holds the matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee

from control.core.errors import conflict, forbidden, invalid, not_found
from control.registry import feed, membership
from control.registry.identity import Principal, require_user_or_root
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


def check_role(role: str | None, need: str, what: str) -> None:
    """The one role check: ``role`` (None: no member) must rank at least ``need``."""
    if role is None:
        raise forbidden(f"not a member of this {what}")
    if RANK[role] < RANK[need]:
        raise forbidden(f"needs the {need} role in this {what}; caller is {role}")


@dataclass(frozen=True)
class _Entity:
    """What differs between groups and spaces for the role check; the rule itself does not."""

    model: type[peewee.Model]
    what: str
    role_of: Callable[[int, int], str | None]
    provider_reads: Callable[[int], set[int]]
    provider_rule: str
    user_reads: Callable[[int], set[int]]


_SPACE = _Entity(Space, "space", membership.space_role, membership.provider_spaces,
                 "a provider may only read the spaces it supports", membership.user_spaces)
_GROUP = _Entity(Group, "group", membership.group_role, membership.provider_groups,
                 "a provider may only read the groups of the spaces it supports", membership.user_groups)


def _access(principal: Principal, entity: _Entity, ident: int, need: str) -> tuple[peewee.Model, str | None]:
    row = fetch(entity.model, ident)
    if principal.is_root:
        return row, None
    if principal.provider is not None:
        if need == READ and row.id in entity.provider_reads(principal.provider.id):
            return row, None
        raise forbidden(entity.provider_rule)
    if principal.user is None:
        raise forbidden(f"a {principal.kind} token may not do this")
    role = entity.role_of(principal.user.id, row.id)
    check_role(role, need, entity.what)
    return row, role


def space_access(principal: Principal, space_id: int, need: str = READ) -> tuple[Space, str | None]:
    """The space and the caller's effective role in it (None for root and providers)."""
    return _access(principal, _SPACE, space_id, need)


def group_access(principal: Principal, group_id: int, need: str = READ) -> tuple[Group, str | None]:
    """The group and the caller's effective role in it (None for root and providers)."""
    return _access(principal, _GROUP, group_id, need)


def provider_access(principal: Principal, provider_id: int) -> Provider:
    """The administrator, or the provider itself."""
    provider = fetch(Provider, provider_id)
    if principal.is_root:
        return provider
    if principal.provider is not None and principal.provider.id == provider.id:
        return provider
    raise forbidden("only the administrator or the provider itself may do this")


def provider_read(principal: Principal, provider_id: int) -> Provider:
    """Users and root read every provider (to pick one for support); a provider only itself."""
    if principal.provider is not None:
        return provider_access(principal, provider_id)
    require_user_or_root(principal)
    return fetch(Provider, provider_id)


def support_writer(principal: Principal, space_id: int, provider_id: int) -> Space:
    """Revoking a support: space admins and root, and the provider itself for its own."""
    if principal.provider is not None:
        if principal.provider.id != provider_id:
            raise forbidden("a provider may only change its own support")
        return fetch(Space, space_id)
    space, _ = space_access(principal, space_id, "admin")
    return space


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


def new_entity_owner(principal: Principal, owner_id: int | None) -> User | None:
    """The owner of a new group or space: the creating user, or whom root names."""
    require_user_or_root(principal)
    if principal.user is not None:
        if owner_id is not None and owner_id != principal.user.id:
            raise forbidden("only the administrator may name another owner")
        return principal.user
    if owner_id is None:
        return None
    user = User.get_or_none(User.id == owner_id)
    if user is None:
        raise invalid(f"owner: user {owner_id} does not exist")
    return user


# --- users ------------------------------------------------------------------------------


def require_self_or_root(principal: Principal, user: User) -> None:
    if principal.is_root:
        return
    if principal.user is None or principal.user.id != user.id:
        raise forbidden("only the user itself or the administrator may do this")


def sees_private(principal: Principal | None, user_id: int) -> bool:
    """A user's e-mail is for itself and the administrator (None: an internal caller)."""
    return principal is None or principal.is_root or (
        principal.user is not None and principal.user.id == user_id)


# --- visibility: what a caller may list -------------------------------------------------


def _visible(principal: Principal, entity: _Entity) -> set[int] | None:
    if principal.is_root:
        return None
    if principal.provider is not None:
        return entity.provider_reads(principal.provider.id)
    require_user_or_root(principal)
    return entity.user_reads(principal.user.id)


def visible_spaces(principal: Principal) -> set[int] | None:
    """Space ids the caller may list; None means all (root)."""
    return _visible(principal, _SPACE)


def visible_groups(principal: Principal) -> set[int] | None:
    """Group ids the caller may list; None means all (root)."""
    return _visible(principal, _GROUP)


def only_visible_groups(principal: Principal, ids: set[int]) -> set[int]:
    """The groups of ``ids`` the caller may see (a group's parents are not its members, so
    reading a group does not show them all)."""
    visible = visible_groups(principal)
    return ids if visible is None else ids & visible


def visible_providers(principal: Principal) -> set[int] | None:
    """Provider ids the caller may list: a provider only itself; users and root all (None)."""
    if principal.provider is not None:
        return {principal.provider.id}
    require_user_or_root(principal)
    return None


def visible_relations_of_user(principal: Principal, user_id: int, kind: str) -> set[int] | None:
    """Which of a user's effective groups or spaces (``kind``) the caller may list: all of
    them for the user itself and root (None), else only those the caller sees itself.
    Like ``/users/{id}``, this is for users and root: a provider gets 403."""
    require_user_or_root(principal)
    if principal.is_root or principal.user.id == user_id:
        return None
    return visible_spaces(principal) if kind == "spaces" else visible_groups(principal)


def chains_the_caller_sees(principal: Principal, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user's effective groups or spaces (``membership.user_*_relations``) with only the
    chains (``via``) made wholly of groups the caller may see itself. Another user may learn
    that dora reaches a space they share, not the names of groups it is in none of: a chain
    through one is left out (the user itself and root see every chain)."""
    visible = visible_groups(principal)
    if visible is None:
        return entries
    return [{**e, "via": [chain for chain in e["via"] if visible.issuperset(chain)]} for e in entries]


def audience(principal: Principal) -> feed.Audience:
    """The changes the caller may read: the feed's form of the visibility rules above."""
    if principal.is_root:
        return feed.Audience(everything=True)
    if principal.provider is not None:
        spaces, groups, users = membership.provider_region(principal.provider.id)
        return feed.Audience(provider_id=principal.provider.id, spaces=frozenset(spaces),
                             groups=frozenset(groups), users=frozenset(users))
    if principal.user is not None:
        uid = principal.user.id
        return feed.Audience(spaces=frozenset(membership.user_spaces(uid)),
                             groups=frozenset(membership.user_groups(uid)), users=frozenset({uid}))
    raise forbidden(f"a {principal.kind} token may not read the change feed")


# --- resources a user owns inside an optional space (the farm's tasks) ------------------


def may_see_owned(user_id: int | None, owner_id: int | None, space_id: int | None) -> bool:
    """The rule of ``see_owned`` for a user known by id (None: the administrator), with no
    request at hand: whether a webhook's owner may receive an event about the resource."""
    if user_id is None or owner_id == user_id:
        return True
    return space_id is not None and membership.space_role(user_id, space_id) is not None


def see_owned(principal: Principal, owner_id: int | None, space_id: int | None, what: str) -> None:
    """The owner, the members of its space and the administrator see it."""
    require_user_or_root(principal)
    if may_see_owned(None if principal.is_root else principal.user.id, owner_id, space_id):
        return
    raise forbidden(f"only the submitter, members of the {what}'s space and the administrator may see it")


def visible_owned(principal: Principal, owner: peewee.Field, space: peewee.Field) -> peewee.Expression | None:
    """The list form of ``see_owned``: which rows of resources a user owns inside an optional
    space (the farm's tasks; ``owner`` and ``space`` are their columns) the caller may list.
    None means all (root). A user lists what it submitted and what lies in its spaces, exactly
    the rows it could read one by one; the route filters with it rather than keep a copy."""
    require_user_or_root(principal)
    if principal.is_root:
        return None
    uid = principal.user.id
    return (owner == uid) | space.in_(sorted(membership.user_spaces(uid)) or [0])


def read_task_file(principal: Principal, owner_id: int | None, space_id: int | None) -> None:
    """A task's output is read by whoever may see the task: the data is the space's, and its
    members already reach it by SFTP; anyone else gets the listing's 403."""
    see_owned(principal, owner_id, space_id, "task")


def schedule_transfer(principal: Principal, space_id: int) -> Space:
    """Replicating, migrating and evicting a space's data take its admin role (Onezone's
    schedule-replication privilege): they move storage the providers granted to the space."""
    require_user_or_root(principal)
    if Space.get_or_none(Space.id == space_id) is None:
        raise invalid(f"space: space {space_id} not found")
    return space_access(principal, space_id, "admin")[0]


def see_transfer(principal: Principal, space_id: int) -> None:
    """A transfer is seen by the space's members (its data), its providers and the administrator."""
    space_access(principal, space_id, READ)


def change_transfer(principal: Principal, space_id: int) -> None:
    """Cancelling or rerunning a transfer is scheduling one: the space's admin role."""
    require_user_or_root(principal)
    space_access(principal, space_id, "admin")


def cancel_owned(principal: Principal, owner_id: int | None, space_id: int | None, what: str) -> None:
    """Only the owner and the administrator stop it (space members only see it)."""
    see_owned(principal, owner_id, space_id, what)
    if not principal.is_root and owner_id != principal.user.id:
        raise forbidden(f"only the submitter or the administrator may cancel a {what}")


def submit_into_space(principal: Principal, space_id: int, writer: str | None = None) -> None:
    """Putting a resource into a space takes membership of it; the space is a body field (422).

    ``writer`` names a resource that writes data into the space (a task type with uploads,
    e.g. "task type 'pipeline'"): that takes ``WRITE_DATA`` there, and the 403 says so.
    """
    require_user_or_root(principal)
    if Space.get_or_none(Space.id == space_id) is None:
        raise invalid(f"space: space {space_id} not found")
    if principal.is_root:
        return
    role = membership.space_role(principal.user.id, space_id)
    need = WRITE_DATA if writer is not None else READ
    if role is not None and RANK[role] >= RANK[need]:
        return
    has = f"caller is {role}" if role is not None else "caller is not a member"
    if writer is not None:
        raise forbidden(f"space: {writer} writes its outputs into space {space_id}, which takes write "
                        f"permission there (the {need} role or above; {has})")
    raise forbidden(f"not a member of space {space_id}")


# --- resources owned by a user or by a space (the farm's templates and their schedules) --
# A space-owned one follows the space's roles: members see it (and may launch it, if they
# may submit its task), admins and owners change it. A user-owned one is its owner's alone.
# Root owns the ones with neither and may do everything.

SHARED_WRITE = "admin"


def _held(principal: Principal, owner_id: int | None, space_id: int | None, need: str, what: str) -> None:
    require_user_or_root(principal)
    if principal.is_root:
        return
    uid = principal.user.id
    if space_id is None:
        if owner_id == uid:
            return
        raise forbidden(f"only its owner and the administrator may {'see' if need == READ else 'change'} "
                        f"this {what}")
    role = membership.space_role(uid, space_id)
    if role is None:
        raise forbidden(f"this {what} belongs to space {space_id}; only its members and the administrator see it")
    check_role(role, need, f"{what}'s space")


def see_shared(principal: Principal, owner_id: int | None, space_id: int | None, what: str) -> None:
    """Its owner (a user, or a space's members) and the administrator see it."""
    _held(principal, owner_id, space_id, READ, what)


def change_shared(principal: Principal, owner_id: int | None, space_id: int | None, what: str) -> None:
    """Its owning user, its space's admins and owners, and the administrator change or delete it."""
    _held(principal, owner_id, space_id, SHARED_WRITE, what)


def new_shared_owner(principal: Principal, space_id: int | None, what: str) -> tuple[int | None, int | None]:
    """The owner of a new shared resource: (user id, space id). A space takes its admin role."""
    require_user_or_root(principal)
    if space_id is not None:
        if Space.get_or_none(Space.id == space_id) is None:
            raise invalid(f"space: space {space_id} not found")
        if not principal.is_root:
            check_role(membership.space_role(principal.user.id, space_id), SHARED_WRITE, "space")
        return None, space_id
    return (None if principal.is_root else principal.user.id), None


def visible_shared(principal: Principal) -> tuple[int | None, set[int]] | None:
    """What shared resources a caller may list: (its user id, its spaces); None means all (root)."""
    require_user_or_root(principal)
    if principal.is_root:
        return None
    uid = principal.user.id
    return uid, membership.user_spaces(uid)


def change_owned_schedule(principal: Principal, owner_id: int | None, template_owner: int | None,
                          template_space: int | None) -> None:
    """A schedule fires as its owner: the owner changes it, and so do those who may change its
    template (to stop a schedule on their template) and the administrator."""
    require_user_or_root(principal)
    if principal.is_root or (owner_id is not None and owner_id == principal.user.id):
        return
    change_shared(principal, template_owner, template_space, "schedule's template")


# --- webhooks ---------------------------------------------------------------------------


def webhook_holder(principal: Principal) -> int | None:
    """Who a new webhook belongs to: the calling user, or None for the administrator.
    Providers and nodes have no webhooks."""
    require_user_or_root(principal)
    return None if principal.is_root else principal.user.id


def webhook_access(principal: Principal, owner_id: int | None) -> None:
    """A webhook is its owner's and the administrator's only: others get 403 for every action."""
    require_user_or_root(principal)
    if principal.is_root or owner_id == principal.user.id:
        return
    raise forbidden("only the user who made a webhook, and the administrator, may see or change it")


def webhook_scope(principal: Principal, scope: str, scope_id: int | None) -> None:
    """What a webhook may listen to: ``all`` is the administrator's; ``space`` takes membership
    of it (422 when there is no such space); ``template`` takes seeing the template
    (``see_shared``, asked by the route, which has the template). Every event is checked again
    against its receiver (``may_see_owned``), so a scope never shows what its owner could not read."""
    require_user_or_root(principal)
    if scope == "all" and not principal.is_root:
        raise forbidden("scope: only the administrator may receive every event (scope all)")
    if scope == "space" and scope_id is not None:  # no id at all: the service's 422 says what is missing
        if Space.get_or_none(Space.id == scope_id) is None:
            raise invalid(f"scope_id: space {scope_id} not found")
        if not principal.is_root and membership.space_role(principal.user.id, scope_id) is None:
            raise forbidden(f"scope_id: not a member of space {scope_id}")

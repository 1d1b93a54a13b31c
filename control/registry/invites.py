"""Invite tokens: how a user, or a group, joins a space or a group without an admin
looking up its id (Onezone's way).

An admin issues an invite carrying the role the newcomer gets, who may redeem it (a
user for itself, or a user for a group it administers), how many times, and until
when. The secret is shown once and stored as a digest (``identity.new_secret``).
Redeeming checks everything before it changes anything: an unknown token is a 404,
an expired, used-up or revoked one a 410, an existing membership a 409, and none of
them consumes a use. Issuing and revoking are in the change feed, scoped to the space
or group; a redemption is the membership change it makes, naming the invite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee

from control.core.errors import conflict, forbidden, invalid, not_found
from control.core.models import iso, now
from control.registry import feed, groups, members, spaces
from control.registry.access import group_access
from control.registry.identity import Principal, find_secret, gone, issued_secret, new_secret, revoke_secret
from control.registry.models import Group, GroupChild, GroupUser, Invite, Space, SpaceGroup, SpaceUser, User

GROUP_ROLES_IN_SPACE = ("member", "admin")


def state(invite: Invite) -> str:
    if invite.revoked:
        return "revoked"
    if invite.uses >= invite.max_uses:
        return "used"
    if invite.expires_at <= now():
        return "expired"
    return "active"


def _target(invite: Invite) -> tuple[str, int]:
    return ("space", invite.space_id) if invite.space_id is not None else ("group", invite.group_id)


def _scope(invite: Invite) -> dict[str, int]:
    kind, ident = _target(invite)
    return {f"{kind}_id": ident}


def _feed_data(invite: Invite) -> dict[str, Any]:
    kind, ident = _target(invite)
    return {kind: ident, "role": invite.role, "subject": invite.subject,
            "max_uses": invite.max_uses, "expires_at": iso(invite.expires_at)}


def issue(principal: Principal, target: Space | Group, subject: str, role: str, uses: int,
          ttl: int) -> tuple[Invite, str]:
    """A new invite and its secret (the only time the plaintext exists)."""
    is_space = isinstance(target, Space)
    if subject == "group":
        allowed = GROUP_ROLES_IN_SPACE if is_space else ("member",)
        if role not in allowed:
            where = "in a space" if is_space else "nested in a group (a child group has no role)"
            raise invalid(f"role: a group {where} can be {' or '.join(allowed)}, not {role}")
    plain, hashed = new_secret("invite")
    invite = Invite.create(token_hash=hashed, space=target if is_space else None,
                           group=None if is_space else target, subject=subject, role=role,
                           max_uses=uses, expires_at=now() + ttl,
                           created_by=principal.user.id if principal.user is not None else None)
    feed.record("invite", invite.id, "create", _feed_data(invite), **_scope(invite))
    return invite, plain


def listing(target: Space | Group) -> peewee.ModelSelect:
    if isinstance(target, Space):
        return Invite.select().where(Invite.space == target.id)
    return Invite.select().where(Invite.group == target.id)


def find(target: Space | Group, invite_id: int) -> Invite:
    return issued_secret(listing(target), invite_id, "invite")


def revoke(invite: Invite) -> None:
    if revoke_secret(invite):
        feed.record("invite", invite.id, "delete", _feed_data(invite), **_scope(invite))


@dataclass(frozen=True)
class Joined:
    target: Space | Group
    member: User | Group
    role: str | None


def _usable(invite: Invite, kind: str) -> None:
    what = f"this {kind} invite"
    current = state(invite)
    if current == "revoked":
        raise gone(f"{what} was revoked")
    if current == "used":
        raise gone(f"{what} has been used {invite.uses} of {invite.max_uses} times")
    if current == "expired":
        raise gone(f"{what} expired at {iso(invite.expires_at)}")


def _consume(invite: Invite) -> None:
    """One use, atomically: two redemptions of the last use cannot both pass."""
    taken = (Invite.update(uses=Invite.uses + 1)
             .where(Invite.id == invite.id, Invite.uses < Invite.max_uses,
                    Invite.revoked == False, Invite.expires_at > now())  # noqa: E712
             .execute())
    if taken != 1:
        raise gone("this invite was used up or revoked meanwhile")


def redeem(principal: Principal, kind: str, token: str, group_id: int | None) -> Joined:
    """Join the space or group (``kind``) the invite names, as the caller or as its group."""
    if principal.user is None:
        raise forbidden("only a user redeems an invite (for itself or a group it administers)")
    invite = find_secret(Invite, token)
    if invite is None or _target(invite)[0] != kind:
        raise not_found(f"{kind} invite", "with this token")
    _usable(invite, kind)
    target = invite.space if kind == "space" else invite.group
    if invite.subject == "user":
        if group_id is not None:
            raise invalid("group: this invite is for a user; redeem it without a group")
        return _join_user(invite, target, principal.user)
    if group_id is None:
        raise invalid("group: this invite is for a group; name the group you administer")
    group, _ = group_access(principal, group_id, "admin")
    return _join_group(invite, target, group)


def _join_user(invite: Invite, target: Space | Group, user: User) -> Joined:
    model, parent = (SpaceUser, SpaceUser.space) if isinstance(target, Space) else (GroupUser, GroupUser.group)
    if model.select().where(parent == target.id, model.user == user.id).exists():
        raise conflict(f"user {user.id} is already a member of {_name(target)}; an admin changes roles")
    _consume(invite)
    members.add(model, target.id, user, invite.role, invite=invite.id)
    return Joined(target, user, invite.role)


def _join_group(invite: Invite, target: Space | Group, group: Group) -> Joined:
    if isinstance(target, Space):
        if SpaceGroup.select().where(SpaceGroup.space == target.id, SpaceGroup.group == group.id).exists():
            raise conflict(f"group {group.id} is already a member of {_name(target)}")
        _consume(invite)
        spaces.add_group(target, group, invite.role, invite=invite.id)
        return Joined(target, group, invite.role)
    if GroupChild.select().where(GroupChild.parent == target.id, GroupChild.child == group.id).exists():
        raise conflict(f"group {group.id} is already nested in {_name(target)}")
    _consume(invite)
    groups.nest(target, group, invite=invite.id)  # 409 on a cycle rolls the use back too
    return Joined(target, group, None)


def _name(target: Space | Group) -> str:
    return f"{'space' if isinstance(target, Space) else 'group'} {target.id} ({target.name})"

"""Answers shared by the registry routes: pages over computed lists, member rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.registry.members import Relation, relation
from control.registry.models import Group, User
from control.registry.schemas import EffectiveUserOut, GroupMemberOut, MemberOut
from control.web.routing import Context, paginate


def page_list(items: list[Any], ctx: Context, name_of: Callable[[Any], str]) -> dict[str, Any]:
    """Same ``?name=``, ``?limit=`` and ``?offset=`` semantics as ``routing.paginate``."""
    needle = (ctx.query.get("name") or "").lower()
    if needle:
        items = [i for i in items if needle in name_of(i).lower()]
    limit, offset = ctx.query["limit"], ctx.query["offset"]
    return {"items": items[offset:offset + limit], "total": len(items),
            "limit": limit, "offset": offset}


def member_out(user: User, role: str) -> MemberOut:
    return MemberOut(id=user.id, username=user.username, full_name=user.full_name, role=role)


def group_member_out(group: Group, role: str | None) -> GroupMemberOut:
    return GroupMemberOut(id=group.id, name=group.name, role=role)


def list_members(model: Relation, parent_id: int, ctx: Context) -> dict[str, Any]:
    """A group's or space's direct users with their roles, paginated by username."""
    parent, _, _ = relation(model)
    query = model.select(model, User).join(User).where(parent == parent_id)
    return paginate(query, ctx, User.username, lambda r: member_out(r.user, r.role))


def effective_page(entries: dict[int, dict[str, Any]], ctx: Context) -> dict[str, Any]:
    users = {u.id: u for u in User.select().where(User.id.in_(list(entries)))} if entries else {}
    items = [EffectiveUserOut(id=uid, username=users[uid].username,
                              full_name=users[uid].full_name, role=e["role"], direct=e["direct"],
                              membership=e["via"])
             for uid, e in sorted(entries.items()) if e["role"] is not None]
    return page_list(items, ctx, lambda i: i.username)

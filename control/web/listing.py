"""Answers shared by the registry routes: pages over computed lists, members, effective relations."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from control.core.errors import invalid
from control.registry import membership
from control.registry.access import chains_the_caller_sees
from control.registry.members import Relation, relation
from control.registry.models import Group, Space, User
from control.registry.schemas import (
    ChainLink,
    EffectiveUserOut,
    GroupLinkOut,
    GroupMemberOut,
    MemberOut,
    UserRelationOut,
)
from control.web.routing import Context, Query, paginate, paginated_query

MAX_OFFSET = 2**31 - 1


def page_query(names: bool = False) -> dict[str, Query]:
    """``?limit=``, ``?offset=`` (bounded: no client input reaches the database as an integer
    it cannot hold) and, for lists of named things, ``?name=``."""
    query = paginated_query()
    query["offset"] = Query(int, 0, "Rows to skip", 0, MAX_OFFSET)
    if not names:
        query.pop("name")
    return query


def page_rows(rows: list[Any], ctx: Context, name_of: Callable[[Any], str],
              to_out: Callable[[Any], Any]) -> dict[str, Any]:
    """Same ``?name=``, ``?limit=`` and ``?offset=`` semantics as ``routing.paginate``, over a
    computed list; only the rows of the page are turned into answers."""
    needle = (ctx.query.get("name") or "").lower()
    if needle:
        rows = [r for r in rows if needle in name_of(r).lower()]
    limit, offset = ctx.query["limit"], ctx.query["offset"]
    return {"items": [to_out(r) for r in rows[offset:offset + limit]], "total": len(rows),
            "limit": limit, "offset": offset}


def names(model: type[Group] | type[Space], ids: Iterable[int]) -> dict[int, Any]:
    """id -> the row (id and name only), loaded in slices of ids."""
    return {r.id: r for part in membership.chunks(ids)
            for r in model.select(model.id, model.name).where(model.id.in_(part))}


def member_out(user: User, role: str) -> MemberOut:
    return MemberOut(id=user.id, username=user.username, full_name=user.full_name, role=role)


def group_member_out(group: Group, role: str | None) -> GroupMemberOut:
    return GroupMemberOut(id=group.id, name=group.name, role=role)


def list_members(model: Relation, parent_id: int, ctx: Context) -> dict[str, Any]:
    """A group's or space's direct users with their roles, paginated by username."""
    parent, _, _ = relation(model)
    query = model.select(model, User).join(User).where(parent == parent_id)
    return paginate(query, ctx, User.username, lambda r: member_out(r.user, r.role))


def effective_page(users: membership.EffectiveUsers, ctx: Context) -> dict[str, Any]:
    """A page of a space's or group's effective users (``?name=``, ``?limit=``, ``?offset=``)."""
    limit, offset = ctx.query["limit"], ctx.query["offset"]
    total, rows = users.page(ctx.query.get("name") or None, limit, offset)
    items = [EffectiveUserOut(id=e["id"], username=e["username"], full_name=e["full_name"], role=e["role"],
                              direct=e["direct"], membership=e["via"]) for e in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def relations_page(model: type[Group] | type[Space], entries: list[dict[str, Any]],
                   ctx: Context) -> dict[str, Any]:
    """A user's effective groups or spaces (``membership.user_*_relations``), by id, with the
    chains the caller may see (``access.chains_the_caller_sees``)."""
    entries = chains_the_caller_sees(ctx.principal, entries)
    named = names(model, (e["id"] for e in entries))
    return page_rows(entries, ctx, lambda e: named[e["id"]].name,
                     lambda e: UserRelationOut(id=e["id"], name=named[e["id"]].name, role=e["role"],
                                               direct=e["direct"], membership=e["via"]))


def links_page(ids: Iterable[int], direct: set[int], ctx: Context) -> dict[str, Any]:
    """Groups related to one group (parents, ancestors, descendants), by id."""
    named = names(Group, ids)
    return page_rows(sorted(named), ctx, lambda g: named[g].name,
                     lambda g: GroupLinkOut(id=g, name=named[g].name, direct=g in direct))


def chain_page(chains: membership.Chains, head: ChainLink, user: User, ctx: Context) -> dict[str, Any]:
    """One page of the chains from a space or group (``head``) down to the user."""
    limit, offset = ctx.query["limit"], ctx.query["offset"]
    page = chains.page(offset, limit)
    groups = names(Group, (g for chain in page for g in chain if g != membership.USER))
    tail = ChainLink(type="user", id=user.id, name=user.username)
    items = [[head, *(ChainLink(type="group", id=g, name=groups[g].name) for g in chain[:-1]), tail]
             for chain in page]
    return {"items": items, "total": chains.total, "limit": limit, "offset": offset}


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


def query_time(name: str, value: str) -> float:
    """An RFC 3339 time from the query string (the ``date-time`` format the OpenAPI document
    declares, offset included) as epoch seconds, the form times are stored in. Python's parser
    takes more than RFC 3339 and not all of it (a lower-case ``t``/``z``, a leap second
    ``:60``, which counts as the second before it), so the pattern decides what is a time."""
    if not RFC3339.match(value):
        raise invalid(f"{name}: not an RFC 3339 time (e.g. 2026-11-30T09:00:00Z): {value!r}")
    text = re.sub(r"([T ]\d\d:\d\d):60", r"\1:59", value.upper())
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"{name}: not an RFC 3339 time (e.g. 2026-11-30T09:00:00Z): {value!r}") from None
    return when.timestamp()

"""Helpers shared by the named registry entities: pages over computed lists, unique names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee

from control.core.errors import conflict
from control.web.routing import Context


def page_list(items: list[Any], ctx: Context, name_of: Callable[[Any], str]) -> dict[str, Any]:
    """Same ``?name=``, ``?limit=`` and ``?offset=`` semantics as ``routing.paginate``."""
    needle = (ctx.query.get("name") or "").lower()
    if needle:
        items = [i for i in items if needle in name_of(i).lower()]
    limit, offset = ctx.query["limit"], ctx.query["offset"]
    return {"items": items[offset:offset + limit], "total": len(items),
            "limit": limit, "offset": offset}


def unique_name(model: type[peewee.Model], name: str, exclude: int | None = None) -> None:
    """409 before the insert: a clearer message than the unique index's IntegrityError."""
    query = model.select().where(model.name == name)
    if exclude is not None:
        query = query.where(model.id != exclude)
    if query.exists():
        raise conflict(f"{model.__name__.lower()} name {name!r} is taken")

"""Pages over lists computed in Python (effective members), shaped like ``paginate``'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.api.routing import Context


def page_list(items: list[Any], ctx: Context, name_of: Callable[[Any], str]) -> dict[str, Any]:
    """Same ``?name=``, ``?limit=`` and ``?offset=`` semantics as ``routing.paginate``."""
    needle = (ctx.query.get("name") or "").lower()
    if needle:
        items = [i for i in items if needle in name_of(i).lower()]
    limit, offset = ctx.query["limit"], ctx.query["offset"]
    return {"items": items[offset:offset + limit], "total": len(items),
            "limit": limit, "offset": offset}

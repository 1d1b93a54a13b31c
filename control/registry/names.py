"""Names of groups, spaces and providers are unique: a clear 409 before the insert."""

from __future__ import annotations

import peewee

from control.core.errors import conflict


def unique_name(model: type[peewee.Model], name: str, exclude: int | None = None) -> None:
    """409 before the insert: a clearer message than the unique index's IntegrityError."""
    query = model.select().where(model.name == name)
    if exclude is not None:
        query = query.where(model.id != exclude)
    if query.exists():
        raise conflict(f"{model.__name__.lower()} name {name!r} is taken")

"""Versioned, additive schema migrations applied by ``zonefarm db upgrade``.

Each migration module ``mNNNN_<name>.py`` defines ``VERSION`` and ``up(db, migrator)``.
Migrations only add (tables, columns, indexes) and must be safe to re-run, because
migration 0001 builds tables from the current models: a later migration that adds a
column checks first (``add_column_if_missing``). Nothing here ever drops data.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import peewee
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator, SqliteMigrator

from control.core.db import database
from control.core.models import BaseModel, now


class SchemaVersion(BaseModel):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.CharField(max_length=100)
    applied_at = peewee.DoubleField(default=now)


def _migrations() -> list[ModuleType]:
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    mods.sort(key=lambda m: m.VERSION)
    versions = [m.VERSION for m in mods]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return mods


def _migrator(db: peewee.Database) -> SchemaMigrator:
    if isinstance(db, peewee.PostgresqlDatabase):
        return PostgresqlMigrator(db)
    return SqliteMigrator(db)


def add_column_if_missing(db: peewee.Database, migrator: SchemaMigrator, table: str,
                          column: str, field: peewee.Field) -> None:
    if column not in {c.name for c in db.get_columns(table)}:
        from playhouse.migrate import migrate
        migrate(migrator.add_column(table, column, field))


def applied_versions() -> set[int]:
    if not database.table_exists(SchemaVersion._meta.table_name):
        return set()
    return {row.version for row in SchemaVersion.select()}


def pending() -> list[ModuleType]:
    done = applied_versions()
    return [m for m in _migrations() if m.VERSION not in done]


def upgrade() -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Returns their names."""
    db = database.obj
    with db.connection_context():
        db.create_tables([SchemaVersion], safe=True)
        applied = []
        for mod in pending():
            name = mod.__name__.rsplit(".", 1)[1]
            with db.atomic():
                mod.up(db, _migrator(db))
                SchemaVersion.create(version=mod.VERSION, name=name)
            applied.append(name)
        return applied


def current_version() -> int:
    versions = applied_versions()
    return max(versions) if versions else 0

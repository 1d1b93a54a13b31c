"""Nodes say why the dispatcher refused to reach them (e.g. their SSH host key changed).

Migration 0002 builds tables from the current models, so on a fresh database the column
already exists; this one only adds it to an older database.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.migrations import add_column_if_missing

VERSION = 7


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    add_column_if_missing(db, migrator, "node", "dispatch_error", peewee.TextField(default=""))

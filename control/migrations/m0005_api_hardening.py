"""Tokens carry a scope and when they were last used; failed logins are counted.

Migration 0001 builds tables from the current models, so on a fresh database the columns
and the table already exist; this one only adds what an older database lacks. Existing
tokens get scope ``write``: what they could do before.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.migrations import add_column_if_missing
from control.registry.models import LoginFailure

VERSION = 5

TOKEN_COLUMNS = {
    "scope": peewee.CharField(max_length=10, default="write"),
    "last_used_at": peewee.DoubleField(null=True),
}


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    for column, field in TOKEN_COLUMNS.items():
        add_column_if_missing(db, migrator, "token", column, field)
    db.create_tables([LoginFailure], safe=True)

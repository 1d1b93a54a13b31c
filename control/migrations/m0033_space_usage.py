"""Space usage: what each provider's agent measured in each supported space's directory.

Additive: four columns on ``support`` (one row per space and provider). Existing supports
have no measurement (``used`` null) until their provider's agent reports.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.migrations import add_column_if_missing

VERSION = 33

COLUMNS = {
    "used": peewee.BigIntegerField(null=True),
    "files": peewee.BigIntegerField(null=True),
    "measured_at": peewee.DoubleField(null=True),
    "over_quota": peewee.BooleanField(default=False, constraints=[peewee.SQL("DEFAULT FALSE")]),
}


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    for column, field in COLUMNS.items():
        add_column_if_missing(db, migrator, "support", column, field)

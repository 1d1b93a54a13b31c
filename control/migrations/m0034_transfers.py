"""Transfers between providers: one table, each row pointing at the farm task that runs it.

Additive: a new table only.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import Transfer

VERSION = 34


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables([Transfer], safe=True)

"""Invite tokens, support tokens, and the total a provider grants (issue 17).

Additive: two new tables and one nullable column. Existing supports stay as they are
(a provider with no ``support_limit`` grants without limit). Migration 0001 builds
tables from the current models, so on a fresh database all of this exists already;
``safe=True`` and ``add_column_if_missing`` make a re-run change nothing.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.migrations import add_column_if_missing
from control.registry.models import Invite, SupportToken

VERSION = 6


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables([Invite, SupportToken], safe=True)
    add_column_if_missing(db, migrator, "provider", "support_limit", peewee.BigIntegerField(null=True))

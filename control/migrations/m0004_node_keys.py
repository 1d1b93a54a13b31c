"""Per-node credentials: each node's key generation, and single-use join tokens.

Additive: three columns on ``node`` (existing nodes start at generation 0, the key the
worker role derives by default) and the ``node_join_token`` table. On a fresh database
migration 0002 built them from the current models already.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import NodeJoinToken
from control.migrations import add_column_if_missing

VERSION = 4

COLUMNS = {
    "key_generation": peewee.IntegerField(default=0),
    "key_previous_generation": peewee.IntegerField(null=True),
    "key_previous_until": peewee.DoubleField(default=0),
}


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    for column, field in COLUMNS.items():
        add_column_if_missing(db, migrator, "node", column, field)
    db.create_tables([NodeJoinToken], safe=True)

"""Resource-aware placement: what a task reserves on its node, its label selector, the node it holds.

Additive: three nullable columns on ``task``. Tasks queued before it ask for no resources,
select no labels and hold no node: they are placed by concurrency alone, as before.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.core.models import JSONField
from control.farm.models import Task
from control.migrations import add_column_if_missing

VERSION = 30


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    add_column_if_missing(db, migrator, "task", "resources", JSONField(null=True))
    add_column_if_missing(db, migrator, "task", "target_labels", JSONField(null=True))
    add_column_if_missing(db, migrator, "task", "reserved_node", peewee.IntegerField(null=True))
    Task._schema.create_indexes(safe=True)  # (reserved_node, state): the claim's "which nodes are held"

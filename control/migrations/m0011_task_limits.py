"""Task limits: what a task may use on its node (memory, CPUs, processes), kept with the task.

Additive: one nullable column on ``task``. Tasks queued before it run with the node's
default limits (the sandbox policy's), as a task whose ``limits`` name nothing does.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.core.models import JSONField
from control.migrations import add_column_if_missing

VERSION = 11


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    add_column_if_missing(db, migrator, "task", "limits", JSONField(null=True))

"""Audit and metrics: the actor of every change and task event, each provider's feed
position, each dispatcher's health, and the pruner's markers.

Additive: existing rows get the actor ``system`` (who made them was not recorded).
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import DispatcherHealth, Housekeeping, TaskEvent
from control.migrations import add_column_if_missing
from control.registry.models import Change

VERSION = 20


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    add_column_if_missing(db, migrator, "change", "actor",
                          peewee.CharField(max_length=200, default="system"))
    add_column_if_missing(db, migrator, "task_event", "actor",
                          peewee.CharField(max_length=200, default="system"))
    add_column_if_missing(db, migrator, "provider", "feed_acked_seq", peewee.IntegerField(null=True))
    add_column_if_missing(db, migrator, "provider", "feed_polled_at", peewee.DoubleField(null=True))
    Change._schema.create_indexes(safe=True)
    TaskEvent._schema.create_indexes(safe=True)
    db.create_tables([DispatcherHealth, Housekeeping], safe=True)

"""Space usage and where uploads go: what each provider's agent measured in each supported
space, the provider's region, the provider each task uploads to, and each task's uploaded files.

Additive: four columns on ``support`` (one row per space and provider; existing supports have
no measurement until their provider's agent reports), ``provider.region`` and two new tables.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import TaskFile, TaskUpload
from control.migrations import add_column_if_missing

VERSION = 33

SUPPORT_COLUMNS = {
    "used": peewee.BigIntegerField(null=True),
    "files": peewee.BigIntegerField(null=True),
    "measured_at": peewee.DoubleField(null=True),
    "over_quota": peewee.BooleanField(default=False, constraints=[peewee.SQL("DEFAULT FALSE")]),
}


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    for column, field in SUPPORT_COLUMNS.items():
        add_column_if_missing(db, migrator, "support", column, field)
    add_column_if_missing(db, migrator, "provider", "region", peewee.CharField(max_length=100, null=True))
    db.create_tables([TaskUpload, TaskFile], safe=True)

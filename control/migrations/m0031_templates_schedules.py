"""Templates, their versions and schedules; where a task came from (template, version, schedule).

Additive: three tables and three nullable columns on ``task`` (tasks submitted before
came from no template).
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import Schedule, Task, Template, TemplateVersion
from control.migrations import add_column_if_missing

VERSION = 31


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables([Template, TemplateVersion, Schedule], safe=True)
    for column in ("template_id", "template_version", "schedule_id"):
        add_column_if_missing(db, migrator, "task", column, peewee.IntegerField(null=True))
    Task._schema.create_indexes(safe=True)

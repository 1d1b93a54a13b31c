"""The task farm tables: nodes, tasks, task events and logs, nonces of signed requests."""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import FARM_MODELS

VERSION = 2


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables(FARM_MODELS, safe=True)

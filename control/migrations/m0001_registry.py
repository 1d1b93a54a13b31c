"""The federation registry tables."""

import peewee
from playhouse.migrate import SchemaMigrator

from control.registry.models import REGISTRY_MODELS

VERSION = 1


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables(REGISTRY_MODELS, safe=True)

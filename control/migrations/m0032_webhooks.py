"""Webhooks: the webhooks users register and the outbox of their deliveries.

Additive: two new tables. Secrets are derived, never stored (``control.farm.webhooks.models``).
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.webhooks.models import WEBHOOK_MODELS

VERSION = 32


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables(WEBHOOK_MODELS, safe=True)

"""Grants: who may submit which task type on which queue (``control.farm.policy``).

Additive: one new table, ``task_grant``. A site upgrading from an earlier schema starts with
no grants, so only root submits until root grants users or groups the right
(``POST /api/v1/grants``, see README "Who may submit what"). On a fresh database
migration 0002 built the table from the current models already.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.farm.models import Grant

VERSION = 10


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    db.create_tables([Grant], safe=True)

"""Providers say where their storage takes uploads (SFTP host, port, user, directory).

Migration 0001 builds tables from the current models, so on a fresh database the
columns already exist; this one only adds what an older database lacks.
"""

import peewee
from playhouse.migrate import SchemaMigrator

from control.migrations import add_column_if_missing

VERSION = 3

COLUMNS = {
    "sftp_host": peewee.CharField(max_length=253, null=True),
    "sftp_port": peewee.IntegerField(default=22),
    "sftp_user": peewee.CharField(max_length=64, null=True),
    "storage_path": peewee.CharField(max_length=1024, null=True),
}


def up(db: peewee.Database, migrator: SchemaMigrator) -> None:
    for column, field in COLUMNS.items():
        add_column_if_missing(db, migrator, "provider", column, field)

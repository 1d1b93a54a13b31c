"""Schema migrations: from empty, run again, report status, and never lose rows.

`zonefarm db upgrade` and `zonefarm db status` run as the installed console script on a
fresh SQLite file and a fresh PostgreSQL database. The data-keeping tests build an older
schema (what a site upgraded from looks like) and then upgrade it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import control.migrations as migrations
from control.core.db import database, init_database, make_database
from tests.conftest import _close_db
from tests.support.pg import PgCluster

ZONEFARM = str(Path(sys.executable).with_name("zonefarm"))
_seq = iter(range(10**6))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (not the suite's migrated template)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = f"zf_mig_{os.getpid()}_{next(_seq)}"
    cluster.sql(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    _close_db()
    cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _zonefarm(db_url: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZONEFARM_")}
    env["ZONEFARM_DATABASE"] = db_url
    done = subprocess.run([ZONEFARM, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _schema(db_url: str) -> dict[str, Any]:
    """Tables, their columns (name, type, null) and indexes, as the database reports them."""
    db = make_database(db_url, 2)
    try:
        with db.connection_context():
            return {t: {"columns": sorted((c.name, c.data_type, c.null) for c in db.get_columns(t)),
                        "indexes": sorted((i.name, tuple(i.columns), i.unique) for i in db.get_indexes(t))}
                    for t in db.get_tables()}
    finally:
        db.close_all()


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    db = make_database(db_url, 2)
    try:
        with db.connection_context():
            return [tuple(r) for r in db.execute_sql(sql).fetchall()]
    finally:
        db.close_all()


def _execute(db_url: str, *statements: str) -> None:
    db = make_database(db_url, 2)
    try:
        with db.connection_context(), db.atomic():
            for sql in statements:
                db.execute_sql(sql)
    finally:
        db.close_all()


def _all_versions() -> list[int]:
    return [m.VERSION for m in migrations._migrations()]


def test_upgrade_from_empty_then_again_changes_nothing(empty_db_url: str) -> None:
    before = _zonefarm(empty_db_url, "db", "status")
    names = [m.__name__.rsplit(".", 1)[1] for m in migrations._migrations()]
    assert before == {"schema_version": 0, "pending": names}

    first = _zonefarm(empty_db_url, "db", "upgrade")
    assert first == {"applied": names, "schema_version": max(_all_versions())}
    schema = _schema(empty_db_url)
    from control.registry.models import Provider, Token, User
    for model in (User, Provider, Token):
        table = model._meta.table_name
        assert table in schema
        assert {c.column_name for c in model._meta.sorted_fields} <= {c[0] for c in schema[table]["columns"]}
    recorded = _rows(empty_db_url, "SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in recorded] == _all_versions()

    second = _zonefarm(empty_db_url, "db", "upgrade")
    assert second == {"applied": [], "schema_version": max(_all_versions())}
    assert _schema(empty_db_url) == schema
    assert _rows(empty_db_url, "SELECT count(*) FROM schema_version") == [(len(names),)]

    assert _zonefarm(empty_db_url, "db", "status") == {"schema_version": max(_all_versions()), "pending": []}


def test_upgrade_of_an_older_database_adds_provider_columns_and_keeps_rows(empty_db_url: str) -> None:
    """A site at schema 2 (before provider storage columns) upgrades without losing providers."""
    _zonefarm(empty_db_url, "db", "upgrade")
    # Wind the provider table back to its schema-2 shape, as an older release created it.
    _execute(empty_db_url,
             *[f"ALTER TABLE provider DROP COLUMN {c}" for c in ("sftp_host", "sftp_port", "sftp_user",
                                                                 "storage_path")],
             "DELETE FROM schema_version WHERE version >= 3",
             "INSERT INTO provider (name, domain, admin_email, created_at, updated_at) "
             "VALUES ('prov-old', 'old.example.org', 'ops@example.org', 1.0, 2.0)")
    assert _zonefarm(empty_db_url, "db", "status")["pending"][0] == "m0003_provider_storage"

    result = _zonefarm(empty_db_url, "db", "upgrade")
    assert "m0003_provider_storage" in result["applied"]
    rows = _rows(empty_db_url, "SELECT name, domain, admin_email, created_at, updated_at, sftp_host, sftp_port, "
                               "sftp_user, storage_path FROM provider")
    assert rows == [("prov-old", "old.example.org", "ops@example.org", 1.0, 2.0, None, 22, None, None)]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []


def test_upgrade_of_a_schema_3_database_keeps_its_supports(empty_db_url: str) -> None:
    """A site from before invites and support tokens (schema 3) keeps every support; the
    migration only adds two tables and one column, and a second run changes nothing."""
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url,
             "DROP TABLE invite", "DROP TABLE support_token",
             "ALTER TABLE provider DROP COLUMN support_limit",
             "DELETE FROM schema_version WHERE version = 6",
             "INSERT INTO provider (name, domain, admin_email, sftp_port, created_at, updated_at) "
             "VALUES ('prov-old', 'old.example.org', 'ops@example.org', 22, 1.0, 2.0)",
             "INSERT INTO space (name, created_at, updated_at) VALUES ('old-space', 1.0, 1.0)",
             "INSERT INTO support (space_id, provider_id, size, created_at, updated_at) "
             "SELECT s.id, p.id, 1073741824, 3.0, 4.0 FROM space s, provider p")
    assert _zonefarm(empty_db_url, "db", "status")["pending"] == ["m0006_invites_support_tokens"]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == ["m0006_invites_support_tokens"]
    assert _rows(empty_db_url, "SELECT p.name, p.support_limit, s.name, x.size, x.created_at FROM support x "
                               "JOIN provider p ON p.id = x.provider_id JOIN space s ON s.id = x.space_id") == [
        ("prov-old", None, "old-space", 1073741824, 3.0)]
    schema = _schema(empty_db_url)
    assert {"invite", "support_token"} <= set(schema)
    assert _rows(empty_db_url, "SELECT count(*) FROM invite") == [(0,)]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []
    assert _schema(empty_db_url) == schema


@pytest.fixture
def extra_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], int]]:
    """Ships a migration from a later release (adds ``user.locale`` with a default); returns its version."""
    version = max(_all_versions()) + 1
    name = f"m{version:04d}_user_locale"
    pkg = tmp_path / "later"
    pkg.mkdir()
    (pkg / f"{name}.py").write_text(textwrap.dedent(f"""
        import peewee
        from control.migrations import add_column_if_missing

        VERSION = {version}

        def up(db, migrator):
            add_column_if_missing(db, migrator, "user", "locale",
                                  peewee.CharField(max_length=16, default="en"))
    """))

    def ship() -> int:
        monkeypatch.setattr(migrations, "__path__", [*migrations.__path__, str(pkg)])
        return version

    yield ship
    sys.modules.pop(f"control.migrations.{name}", None)


def test_a_migration_adding_a_column_keeps_existing_rows(empty_db_url: str,
                                                        extra_migration: Callable[[], int]) -> None:
    init_database(empty_db_url, 4)
    try:
        migrations.upgrade()
        from control.registry.models import Group, User
        with database.connection_context():
            users = [User.create(username=f"u{i}", password_hash="x", email=f"u{i}@example.org")
                     for i in range(3)]
            Group.create(name="g1")
        before = _rows(empty_db_url, 'SELECT id, username, email FROM "user" ORDER BY id')

        version = extra_migration()
        applied = migrations.upgrade()
        assert applied == [f"m{version:04d}_user_locale"]
        with database.connection_context():
            assert migrations.current_version() == version
        after = _rows(empty_db_url, 'SELECT id, username, email, locale FROM "user" ORDER BY id')
        assert after == [(*row, "en") for row in before]
        assert [r[0] for r in after] == [u.id for u in users]
        assert _rows(empty_db_url, 'SELECT name FROM "group"') == [("g1",)]
        assert migrations.upgrade() == []  # and again: nothing
    finally:
        _close_db()


def test_migrations_only_add(empty_db_url: str) -> None:
    """No migration module may drop or rename: a grep guard on the source, then a replay check."""
    for mod in migrations._migrations():
        source = Path(mod.__file__ or "").read_text().lower()
        for verb in ("drop_column", "drop table", "drop column", "rename_column", "rename_table",
                     "drop_tables", "drop_index"):
            assert verb not in source, f"{mod.__name__} uses {verb}"
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url, "INSERT INTO provider (name, domain, admin_email, sftp_port, created_at, updated_at) "
                           "VALUES ('p', 'p.example.org', 'ops@example.org', 2222, 1.0, 1.0)")
    # Forget that every migration ran and replay them all on the populated database.
    _execute(empty_db_url, "DELETE FROM schema_version")
    replayed = _zonefarm(empty_db_url, "db", "upgrade")
    assert len(replayed["applied"]) == len(_all_versions())
    assert _rows(empty_db_url, "SELECT name, sftp_port FROM provider") == [("p", 2222)]


def test_status_rejects_a_bad_database_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZONEFARM_")}
    env["ZONEFARM_DATABASE"] = "mysql://nowhere/db"
    done = subprocess.run([ZONEFARM, "db", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unsupported database URL scheme" in done.stderr
    assert "Traceback" not in done.stderr



def test_upgrade_adds_node_key_columns_and_join_tokens_and_keeps_nodes(empty_db_url: str) -> None:
    """A site at schema 3 (one shared nodes secret) upgrades: its nodes start at key generation 0."""
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url,
             *[f"ALTER TABLE node DROP COLUMN {c}" for c in ("key_generation", "key_previous_generation",
                                                             "key_previous_until", "dispatch_error")],
             "DROP TABLE node_join_token",
             "DELETE FROM schema_version WHERE version >= 4",
             "INSERT INTO node (name, ansible_host, ansible_port, ansible_user, ansible_connection, python, "
             "config_path, region, hostname, queues, concurrency, resources, labels, workdir, state, cordoned, "
             "draining, registered_at, last_seen) VALUES ('wk-old', '10.0.0.1', 22, 'root', 'ssh', "
             "'/usr/bin/python3', '/etc/zonefarm/node.ini', 'default', 'wk-old', '[\"default\"]', 1, '{}', '{}', "
             "'/var/lib/zonefarm/work', 'online', false, false, 1.0, 2.0)")
    assert "m0004_node_keys" in _zonefarm(empty_db_url, "db", "status")["pending"]
    applied = _zonefarm(empty_db_url, "db", "upgrade")["applied"]
    assert "m0004_node_keys" in applied and "m0007_node_dispatch_error" in applied
    rows = _rows(empty_db_url, "SELECT name, ansible_host, key_generation, key_previous_generation, "
                               "key_previous_until, dispatch_error FROM node")
    assert rows == [("wk-old", "10.0.0.1", 0, None, 0.0, "")]
    assert _rows(empty_db_url, "SELECT count(*) FROM node_join_token") == [(0,)]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []


def test_upgrade_adds_token_scope_and_login_failures_and_keeps_tokens(empty_db_url: str) -> None:
    """A site at schema 4 upgrades: its tokens keep working with the scope they had (write)."""
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url,
             *[f"ALTER TABLE token DROP COLUMN {c}" for c in ("scope", "last_used_at")],
             "DROP TABLE login_failure",
             "DELETE FROM schema_version WHERE version = 5",
             "INSERT INTO token (token_hash, kind, created_at, revoked) "
             "VALUES ('0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef', 'user', 1.0, false)")
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == ["m0005_api_hardening"]
    assert _rows(empty_db_url, "SELECT kind, scope, last_used_at FROM token") == [("user", "write", None)]
    assert _rows(empty_db_url, "SELECT count(*) FROM login_failure") == [(0,)]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []


def test_upgrade_adds_the_grants_table_and_keeps_users(empty_db_url: str) -> None:
    """A site from before grants upgrades with its users kept and no grant: only root submits until root grants."""
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url, "DROP TABLE task_grant", "DELETE FROM schema_version WHERE version >= 10",
             "INSERT INTO \"user\" (username, full_name, email, password_hash, active, created_at, updated_at) "
             "VALUES ('alice', '', '', '', true, 1.0, 2.0)")
    assert "m0010_grants" in _zonefarm(empty_db_url, "db", "status")["pending"]
    assert "m0010_grants" in _zonefarm(empty_db_url, "db", "upgrade")["applied"]
    assert _rows(empty_db_url, "SELECT count(*) FROM task_grant") == [(0,)]
    assert _rows(empty_db_url, "SELECT username FROM \"user\"") == [("alice",)]
    columns = {c[0] for c in _schema(empty_db_url)["task_grant"]["columns"]}
    assert {"user_id", "group_id", "task_type", "queue", "targets"} <= columns
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []


def test_upgrade_adds_task_limits_and_keeps_tasks(empty_db_url: str) -> None:
    """A site from before task limits upgrades: its tasks keep everything and run with the node's defaults."""
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url, "ALTER TABLE task DROP COLUMN limits", "DELETE FROM schema_version WHERE version >= 11",
             "INSERT INTO task (name, params, queue, target_kind, priority, timeout, max_attempts, attempt, state, "
             "cancel_requested, created_at, progress, reason) VALUES ('shell', '{\"argv\": [\"true\"]}', 'default', "
             "'any', 0, 60, 3, 0, 'queued', false, 1.0, 0, '')")
    assert "m0011_task_limits" in _zonefarm(empty_db_url, "db", "status")["pending"]
    assert "m0011_task_limits" in _zonefarm(empty_db_url, "db", "upgrade")["applied"]
    assert _rows(empty_db_url, "SELECT name, params, limits FROM task") == [("shell", '{"argv": ["true"]}', None)]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []


def test_upgrade_adds_templates_schedules_and_task_origins(empty_db_url: str) -> None:
    """A site from before templates upgrades: its tasks keep everything and came from no template."""
    _zonefarm(empty_db_url, "db", "upgrade")
    _execute(empty_db_url, "DROP TABLE schedule", "DROP TABLE template_version", "DROP TABLE template",
             "DROP INDEX task_template_id_state", "ALTER TABLE task DROP COLUMN template_id",
             "ALTER TABLE task DROP COLUMN template_version", "ALTER TABLE task DROP COLUMN schedule_id",
             "DELETE FROM schema_version WHERE version >= 31",
             "INSERT INTO task (name, params, queue, target_kind, priority, timeout, max_attempts, attempt, state, "
             "cancel_requested, created_at, progress, reason) VALUES ('shell', '{\"argv\": [\"true\"]}', 'default', "
             "'any', 0, 60, 3, 0, 'queued', false, 1.0, 0, '')")
    assert "m0031_templates_schedules" in _zonefarm(empty_db_url, "db", "status")["pending"]
    assert "m0031_templates_schedules" in _zonefarm(empty_db_url, "db", "upgrade")["applied"]
    assert _rows(empty_db_url, "SELECT name, template_id, template_version, schedule_id FROM task") == [
        ("shell", None, None, None)]
    schema = _schema(empty_db_url)
    assert {"name", "owner", "space_id", "version", "spec"} <= {c[0] for c in schema["template"]["columns"]}
    assert {"template_id", "version", "spec"} <= {c[0] for c in schema["template_version"]["columns"]}
    assert {"template_id", "cron", "interval", "timezone", "next_run", "skip_if_running"} <= {
        c[0] for c in schema["schedule"]["columns"]}
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []


def test_upgrade_adds_actors_and_keeps_the_feed_and_task_events(empty_db_url: str) -> None:
    """A site from before the audit (schema 11) upgrades: its changes and task events are kept,
    with the actor ``system`` (who made them was not recorded), and the new tables start empty."""
    _zonefarm(empty_db_url, "db", "upgrade")
    actor_indexes = sorted(name for table in ("change", "task_event")
                           for name, columns, _ in _schema(empty_db_url)[table]["indexes"] if "actor" in columns)
    assert len(actor_indexes) == 2, actor_indexes
    _execute(empty_db_url,
             *[f'DROP INDEX "{name}"' for name in actor_indexes],
             'ALTER TABLE "change" DROP COLUMN actor', "ALTER TABLE task_event DROP COLUMN actor",
             *[f"ALTER TABLE provider DROP COLUMN {c}" for c in ("feed_acked_seq", "feed_polled_at")],
             "DROP TABLE dispatcher_health", "DROP TABLE housekeeping",
             "DELETE FROM schema_version WHERE version = 20",
             'INSERT INTO "change" (ts, entity, entity_id, op, user_id) VALUES (5.0, \'user\', 7, \'create\', 7)',
             "INSERT INTO provider (name, domain, admin_email, sftp_port, created_at, updated_at) "
             "VALUES ('prov-old', 'old.example.org', 'ops@example.org', 22, 1.0, 2.0)",
             "INSERT INTO task (name, params, queue, target_kind, priority, timeout, max_attempts, attempt, state, "
             "cancel_requested, created_at, progress, reason) VALUES ('shell', '{\"argv\": [\"true\"]}', 'default', "
             "'any', 0, 60, 3, 0, 'queued', false, 1.0, 0, '')",
             "INSERT INTO task_event (task_id, ts, to_state, reason) SELECT id, 1.0, 'queued', 'submitted' FROM task")
    assert _zonefarm(empty_db_url, "db", "status")["pending"] == ["m0020_audit_metrics"]
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == ["m0020_audit_metrics"]
    assert _rows(empty_db_url, 'SELECT seq, ts, entity, entity_id, op, actor FROM "change"') == [
        (1, 5.0, "user", 7, "create", "system")]
    assert _rows(empty_db_url, "SELECT to_state, reason, actor FROM task_event") == [("queued", "submitted", "system")]
    assert _rows(empty_db_url, "SELECT name, feed_acked_seq, feed_polled_at FROM provider") == [
        ("prov-old", None, None)]
    assert _rows(empty_db_url, "SELECT count(*) FROM dispatcher_health") == [(0,)]
    assert _rows(empty_db_url, "SELECT count(*) FROM housekeeping") == [(0,)]
    schema = _schema(empty_db_url)
    assert sorted(name for table in ("change", "task_event")
                  for name, columns, _ in schema[table]["indexes"] if "actor" in columns) == actor_indexes
    assert _zonefarm(empty_db_url, "db", "upgrade")["applied"] == []
    assert _schema(empty_db_url) == schema

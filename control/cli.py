"""``zonefarm``: the one command for operators and services.

Core commands live here; the dispatcher, node agent, provider agent and task runner
add their own subcommands through an ``add_cli(subparsers)`` function in their modules,
imported explicitly below so a broken import is an error, never a missing command.
"""

from __future__ import annotations

import argparse
import json
import sys

from control.core.config import Settings, load_settings, settings_table
from control.farm import dispatcher
from control.node import agent as node_agent
from control.node import runner
from control.provider import agent as provider_agent

PLUGINS = (dispatcher, node_agent, provider_agent, runner)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_api(args: argparse.Namespace) -> int:
    from control.web.server import serve
    settings = _settings(args)
    serve(settings, workers=args.workers, threads=args.threads)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from control.core.db import init_database
    from control.migrations import current_version, upgrade
    settings = _settings(args)
    init_database(settings.database_url)
    applied = upgrade()
    from control.core.db import database
    with database.connection_context():
        version = current_version()
    print(json.dumps({"applied": applied, "schema_version": version}))
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    from control.core.db import database, init_database
    from control.migrations import current_version, pending
    settings = _settings(args)
    init_database(settings.database_url)
    with database.connection_context():
        print(json.dumps({"schema_version": current_version(),
                          "pending": [m.__name__.rsplit(".", 1)[1] for m in pending()]}))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).public(), indent=2))
    return 0


def cmd_config_doc(args: argparse.Namespace) -> int:
    print(settings_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonefarm", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="INI file with a [zonefarm] section")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("api", help="serve the REST API")
    p.add_argument("--workers", type=int, help="override api_workers")
    p.add_argument("--threads", type=int, help="override api_threads")
    p.set_defaults(func=cmd_api)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending migrations (safe to repeat)").set_defaults(func=cmd_db_upgrade)
    db.add_parser("status", help="show the schema version").set_defaults(func=cmd_db_status)

    cfg = sub.add_parser("config", help="settings").add_subparsers(dest="config_command", required=True)
    cfg.add_parser("show", help="effective settings, secrets masked").set_defaults(func=cmd_config_show)
    cfg.add_parser("doc", help="settings table in Markdown").set_defaults(func=cmd_config_doc)

    for module in PLUGINS:
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

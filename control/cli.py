"""``zonefarm``: the one command for operators, services and users.

Server-side commands (argparse) live here; the dispatcher, node agent, provider agent
and task runner add their own subcommands through an ``add_cli(subparsers)`` function
in their modules, imported explicitly below so a broken import is an error, never a
missing command. The user's client commands (``login``, ``task``, ``node ls`` ...) are a
click group in ``control.client``, which speaks HTTP only; ``main`` sends each command
line to the one that owns it, and the click group lists both sets in ``--help`` and in
bash completion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import click

from control.client import commands as client
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


# Global options that take a value, skipped when looking for the command's name.
OPTIONS_WITH_VALUE = ("--config", "--ca-file")


def _command_words(argv: list[str]) -> list[str]:
    """The first two words of the command line that are not options (nor an option's value)."""
    words: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
            if len(words) == 2:
                break
    return words


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    """A parser's subcommands: name -> (parser, help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return {name: (sub, helps.get(name)) for name, sub in action.choices.items()}
    return {}


def _is_server_command(parser: argparse.ArgumentParser, words: list[str]) -> bool:
    server = _subcommands(parser)
    if not words or words[0] not in server:
        return False
    if words[0] != "node":
        return True
    # ``node`` is shared: ``node agent|register|heartbeat`` are the worker's, the rest the client's.
    return len(words) > 1 and words[1] in _subcommands(server["node"][0])


def _forwarder(path: list[str], text: str | None) -> click.Command:
    """A click entry for a server command: it shows in help and completion, and runs the argparse one."""

    @click.command(name=path[-1], help=f"{text or ''}. Server side: see `zonefarm {' '.join(path)} --help`.",
                   short_help=f"[server] {text or ''}", add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def forward(ctx: click.Context) -> None:
        ctx.exit(_run_server([*path, *ctx.args]))

    return forward


def client_group(parser: argparse.ArgumentParser) -> click.Group:
    """The client's click group with every server command added as a forwarding entry."""
    group = client.cli
    for name, (sub, text) in _subcommands(parser).items():
        if name == "node":
            for node_name, (_, node_text) in _subcommands(sub).items():
                client.node.add_command(_forwarder(["node", node_name], node_text))
        elif name not in group.commands:
            group.add_command(_forwarder([name], text))
    return group


def _run_server(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    completing = "_ZONEFARM_COMPLETE" in os.environ
    if not completing and _is_server_command(parser, _command_words(argv)):
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    return client.main(argv, client_group(parser))


if __name__ == "__main__":
    sys.exit(main())

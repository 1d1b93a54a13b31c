"""The dispatcher: ``inventory`` (what a round hands Ansible), ``job`` (running one
ansible-runner job) and ``loop`` (the round: reap, claim, build, run, apply). This module
is only the ``zonefarm dispatcher`` command's glue.
"""

from __future__ import annotations

import argparse

from control.core.config import load_settings

CLAIM_LIMIT = 5000


def cmd_dispatcher(args: argparse.Namespace) -> int:
    # Imported when the command runs, not above: ``zonefarm`` builds every command's parser
    # on each start, and a worker's ``zonefarm node ...`` must not load ansible-runner and
    # the database layer it never uses.
    from control.farm.dispatcher import loop

    settings = load_settings(getattr(args, "config", None))
    return loop.main(settings, ident=args.ident, claim_limit=args.claim_limit, rounds=args.rounds)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dispatcher", help="run the cluster manager: claim tasks, run ansible-runner jobs")
    p.add_argument("--ident", help="dispatcher id recorded on claims (default host:pid:random)")
    p.add_argument("--rounds", type=int, help="stop after this many rounds (testing)")
    p.add_argument("--claim-limit", type=int, default=CLAIM_LIMIT,
                   help="most tasks claimed per round (1 gives one job per task: the benchmark's baseline)")
    p.set_defaults(func=cmd_dispatcher)

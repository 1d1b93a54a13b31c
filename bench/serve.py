"""Serve zonefarm or the bare baseline under gunicorn (gthread or sync) or waitress.

bench/api.py uses it for the baseline and for the WSGI server comparison. Both apps get
the options ``zonefarm api`` runs with (``control.web.server.gunicorn_options``), so a
difference in the figures is the app's, not the server's. Settings come from the same
environment variables (``ZONEFARM_DATABASE``, ``ZONEFARM_LISTEN``...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control.core.config import Settings, load_settings  # noqa: E402
from control.web.server import Gunicorn, configure_logging, gunicorn_options, load_api  # noqa: E402


def load(app: str, settings: Settings) -> Any:
    if app == "zonefarm":
        return load_api(settings)
    from bench.bare_app import build_bare_app
    configure_logging(settings.log_level)
    return build_bare_app(settings.database_url, settings.db_pool_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("zonefarm", "bare"), required=True)
    parser.add_argument("--server", choices=("gthread", "sync", "waitress"), default="gthread")
    args = parser.parse_args(argv)
    settings = load_settings()
    settings.require_secrets()
    if args.server == "waitress":
        import waitress
        # One process: waitress has no pre-fork workers. Same threads as one gunicorn worker.
        waitress.serve(load(args.app, settings), listen=settings.listen,
                       threads=settings.api_threads, connection_limit=1000, ident=None,
                       _quiet=True)
        return 0
    options = gunicorn_options(settings, worker_class=args.server)
    if args.server == "sync":
        options.pop("threads")
    Gunicorn(options, lambda: load(args.app, settings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

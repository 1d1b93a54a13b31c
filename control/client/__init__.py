"""The user's command-line client: ``zonefarm login``, ``task``, ``node ls``, ``space``, ``changes``.

It speaks only HTTP to the API (click for the commands, requests for the calls) and
imports nothing of the server (web, registry, farm, core.db, migrations), so it runs on
a laptop with nothing but this package and its two dependencies.
"""

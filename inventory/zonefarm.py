#!/usr/bin/env python3
"""Ansible dynamic inventory: the zonefarm node registry, from ``GET /api/v1/inventory``.

    ZONEFARM_URL=http://127.0.0.1:8700/api/v1 ZONEFARM_TOKEN=... ansible-inventory -i inventory/zonefarm.py --list

Settings come from the environment (``ZONEFARM_URL``, ``ZONEFARM_TOKEN``) or else from
an INI file, section ``[zonefarm]`` with keys ``url`` and ``token``: the file named by
``ZONEFARM_INVENTORY_INI``, else ``zonefarm.ini`` beside this script, else
``/etc/zonefarm/inventory.ini``. The file holds a credential, so one that others can
read is refused. ``url`` may or may not end in ``/api/v1``. ``ZONEFARM_INVENTORY_STATE``
(``online`` or ``lost``) narrows the hosts. An ``https`` URL's certificate is checked against
``ZONEFARM_CA_FILE`` (or ``ca_file`` in the INI file: the site CA the roles install as
``/etc/zonefarm/ca.pem``), else the system's CAs; the check cannot be turned off.

Groups: ``queue_<queue>``, ``region_<region>``, ``zonefarm_online``/``zonefarm_lost``,
``zonefarm_cordoned``. The token is sent as a Bearer header and never printed: errors
name the URL and the HTTP status only. Every host variable is printed marked unsafe, so no
value a node registered is ever rendered as a template. Standard library only, so any python3
runs it.

The "is the credential file private" check and the INI reader are the worker side's ones
(``control/node/secretfile.py``), loaded by its path in this checkout rather than imported
from the ``control`` package: ansible-inventory may run this script with a python that
does not have the package installed, and the file is standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT = 30
DEFAULT_INIS = (Path(__file__).resolve().with_name("zonefarm.ini"), Path("/etc/zonefarm/inventory.ini"))


SECRETFILE = Path(__file__).resolve().parents[1] / "control" / "node" / "secretfile.py"


class InventoryError(Exception):
    pass


def _load_secretfile() -> Any:
    spec = importlib.util.spec_from_file_location("zonefarm_secretfile", SECRETFILE)
    assert spec is not None and spec.loader is not None, SECRETFILE
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


secretfile = _load_secretfile()


def _from_ini(path: Path) -> dict[str, str]:
    section = secretfile.read_section(path, "zonefarm", InventoryError, what="the token")
    return {k: v.strip() for k, v in section.items()}


def settings(env: dict[str, str]) -> tuple[str, str, str]:
    """(API base URL ending in /api/v1, token, CA file or "")."""
    url, token = env.get("ZONEFARM_URL", ""), env.get("ZONEFARM_TOKEN", "")
    ca_file = env.get("ZONEFARM_CA_FILE", "")
    if not (url and token):
        named = env.get("ZONEFARM_INVENTORY_INI")
        candidates = [Path(named)] if named else [p for p in DEFAULT_INIS if p.is_file()]
        for path in candidates:
            if not path.is_file():
                raise InventoryError(f"{path}: no such file")
            values = _from_ini(path)
            url, token = url or values.get("url", ""), token or values.get("token", "")
            ca_file = ca_file or values.get("ca_file", "")
            break
    if not url:
        raise InventoryError("no API URL: set ZONEFARM_URL or url in the inventory INI file")
    if not token:
        raise InventoryError("no credential: set ZONEFARM_TOKEN or token in the inventory INI file")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InventoryError(f"ZONEFARM_URL must be an http(s) URL, got {url!r}")
    base = url.rstrip("/")
    if not base.endswith("/api/v1"):
        base += "/api/v1"
    if ca_file and not os.path.isfile(ca_file):
        raise InventoryError(f"ZONEFARM_CA_FILE {ca_file}: no such file")
    return base, token, ca_file


def fetch(base: str, token: str, state: str | None = None, ca_file: str = "") -> dict[str, Any]:
    url = base + "/inventory" + (f"?state={urllib.parse.quote(state)}" if state else "")
    # settings() admits only http(s) URLs, so no file: or custom scheme reaches urlopen
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",  # noqa: S310
                                               "Accept": "application/json"})
    try:
        # certificate and host name checked, against the site CA when one is given
        context = ssl.create_default_context(cafile=ca_file or None)
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=context) as resp:  # noqa: S310
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise InventoryError(f"{url}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InventoryError(f"{url}: cannot reach the API ({reason})") from None
    except ValueError:
        raise InventoryError(f"{url}: the answer is not JSON") from None


def unsafe(value: Any) -> Any:
    """Every string the registry holds, marked so Ansible never renders it as a template.

    Ansible trusts what an inventory script prints: a node's label ``{{ lookup('pipe', 'id') }}``
    would run on the operator's controller in any play over this inventory. ``__ansible_unsafe``
    is how Ansible's JSON decoder marks a value as data (the dispatcher's own inventory uses
    ``!unsafe``). Keys stay as they are: Ansible does not render them."""
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, dict):
        return {k: unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="zonefarm dynamic inventory for Ansible")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="every host and group")
    mode.add_argument("--host", help="one host's variables")
    args = parser.parse_args(argv)
    try:
        base, token, ca_file = settings(dict(os.environ))
        inventory = fetch(base, token, os.environ.get("ZONEFARM_INVENTORY_STATE") or None, ca_file)
    except InventoryError as exc:
        print(f"zonefarm inventory: {exc}", file=sys.stderr)
        return 1
    hostvars = {name: unsafe(values) for name, values in inventory.get("_meta", {}).get("hostvars", {}).items()}
    if args.list:
        json.dump({**inventory, "_meta": {"hostvars": hostvars}}, sys.stdout, indent=2, sort_keys=True)
    else:
        json.dump(hostvars.get(args.host, {}), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

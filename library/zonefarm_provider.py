#!/usr/bin/python
"""Ansible module: register a storage provider with the zone, idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zonefarm_provider
short_description: Register a zonefarm storage provider with the zone API
description:
  - Looks the provider up by its exact name through C(GET /api/v1/providers?name=).
  - Registers it with C(POST /api/v1/providers) when it is missing and stores the provider token,
    which the API shows only once, in O(token_path) at mode 0600.
  - Updates the provider's fields with C(PATCH /api/v1/providers/{id}) when they differ, so re-runs
    create no duplicates.
  - Support of a space is not this module's business: it takes the provider's consent, a support
    token redeemed on the provider (C(zonefarm provider support)).
  - With O(state=absent) deletes the provider and its token file.
  - Unreachable APIs and 5xx answers are retried O(retries) times, then the module fails naming the URL.
version_added: "0.1.0"
author: zonefarm
options:
  api_url:
    description: Base URL of the zone API, with or without the C(/api/v1) suffix.
    type: str
    required: true
  api_token:
    description: Bearer credential allowed to manage providers (the root secret).
    type: str
    required: true
  name:
    description: Provider name; unique in the zone.
    type: str
    required: true
  domain:
    description: Provider's DNS domain. Required to register a new provider.
    type: str
  admin_email:
    description: Administrator's e-mail. Required to register a new provider.
    type: str
  sftp_host:
    description: Host workers upload pipeline outputs to over SFTP.
    type: str
  sftp_port:
    description: SFTP port.
    type: int
  sftp_user:
    description: SFTP account on the provider.
    type: str
  storage_path:
    description: Absolute directory holding one sub-directory per supported space.
    type: str
  support_limit:
    description:
      - Total bytes the provider grants over all the spaces it supports. The zone refuses a support
        (or a resize) that would exceed it, and a limit below what the provider grants already.
      - Omitted, the limit is left as it is (none at registration).
    type: int
  region:
    description:
      - Region of the provider's storage; tasks upload to a provider in their node's region first.
      - Omitted, the region is left as it is (none at registration).
    type: str
  token_path:
    description: File that receives the provider token (mode 0600). Required with O(state=present).
    type: path
  token_owner:
    description: Owner of O(token_path).
    type: str
  token_group:
    description: Group of O(token_path).
    type: str
  rotate_lost_token:
    description:
      - When the provider is registered but O(token_path) is missing or empty, issue a new token with
        C(POST /api/v1/providers/{id}/token) (old tokens stop working). When false, fail instead.
    type: bool
    default: true
  state:
    description: Whether the provider should be registered.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description: Seconds per HTTP request.
    type: int
    default: 10
  retries:
    description: Attempts before an unreachable API is reported.
    type: int
    default: 5
  retry_delay:
    description: Seconds between attempts.
    type: float
    default: 2.0
  ca_file:
    description:
      - CA certificate(s) the API's TLS certificate is verified against (the site CA the roles install,
        C(/etc/zonefarm/ca.pem)). Unset means the system's CAs. Verification cannot be turned off.
    type: path
notes:
  - Supports check mode and diff mode.
  - The API stores tokens hashed, so a lost token file cannot be read back; see O(rotate_lost_token).
"""

EXAMPLES = r"""
- name: Register this host as a provider
  zonefarm_provider:
    api_url: "https://zone1:8700"
    ca_file: /etc/zonefarm/ca.pem
    api_token: "{{ zonefarm_root_secret }}"
    name: prov1
    domain: prov1.example.org
    admin_email: ops@example.org
    sftp_host: prov1.example.org
    sftp_user: zfupload
    storage_path: /srv/zonefarm/spaces
    token_path: /etc/zonefarm/provider.token
    token_owner: zonefarm
  no_log: true
"""

RETURN = r"""
provider:
  description: The provider as the API shows it (never the token).
  returned: when the provider exists or was created
  type: dict
provider_id:
  description: The provider's id.
  returned: when the provider exists or was created
  type: int
token_path:
  description: Where the provider token is kept.
  returned: with state=present
  type: str
"""

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402

FIELDS = ("domain", "admin_email", "sftp_host", "sftp_port", "sftp_user", "storage_path", "support_limit",
          "region")
PAGE = 100


class ApiError(Exception):
    """An answer the module cannot act on; the message is shown to the operator as is."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Zone:
    """The few provider routes the module needs, with bounded retries on transport errors."""

    def __init__(self, module: AnsibleModule) -> None:
        p = module.params
        base = p["api_url"].rstrip("/")
        self.base = base if base.endswith("/api/v1") else base + "/api/v1"
        self.token = p["api_token"]
        self.timeout = p["timeout"]
        self.retries = max(1, p["retries"])
        self.delay = p["retry_delay"]
        self.ca_file = p["ca_file"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base + path
        data = json.dumps(body) if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        last = ""
        for attempt in range(1, self.retries + 1):
            try:
                resp = open_url(url, data=data, headers=headers, method=method, timeout=self.timeout,
                                validate_certs=True, ca_path=self.ca_file, follow_redirects="none")
                raw = resp.read()
                return json.loads(raw) if raw else None
            except HTTPError as exc:
                if exc.code < 500:
                    raise ApiError(f"{method} {url} answered {exc.code}: {_error_text(exc)}", exc.code) from None
                last = f"answered {exc.code}: {_error_text(exc)}"
            except (URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if attempt < self.retries:
                time.sleep(self.delay)
        raise ApiError(f"cannot reach the zone API: {method} {url} failed {self.retries} times; last: {last}")

    def find(self, name: str) -> dict[str, Any] | None:
        """``?name=`` matches substrings, so page through and keep the exact match."""
        offset = 0
        while True:
            query = urlencode({"name": name, "limit": PAGE, "offset": offset})
            page = self.call("GET", f"/providers?{query}")
            items = page.get("items", [])
            for item in items:
                if item.get("name") == name:
                    return item
            offset += len(items)
            if not items or offset >= page.get("total", 0):
                return None


def _error_text(exc: HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return body["error"]["message"]
    except Exception:  # noqa: BLE001 - any unreadable body falls back to the reason phrase
        return str(exc.reason)


def _desired(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in FIELDS if params[k] is not None}


def _token_present(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            return bool(fh.read().strip())
    except FileNotFoundError:
        return False


def _write_token(module: AnsibleModule, path: str, token: str) -> None:
    """Created 0600 in the target directory and renamed over, so no reader ever sees a partial file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".zonefarm-token-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fix_token_perms(module, path, False)


def _fix_token_perms(module: AnsibleModule, path: str, changed: bool) -> bool:
    changed = module.set_mode_if_different(path, "0600", changed)
    changed = module.set_owner_if_different(path, module.params["token_owner"], changed)
    return module.set_group_if_different(path, module.params["token_group"], changed)


def present(module: AnsibleModule, zone: Zone) -> dict[str, Any]:
    p = module.params
    if not p["token_path"]:
        module.fail_json(msg="token_path is required with state=present")
    token_path = p["token_path"]
    want = _desired(p)
    current = zone.find(p["name"])
    if current is None:
        missing = [k for k in ("domain", "admin_email") if not p[k]]
        if missing:
            module.fail_json(msg=f"provider {p['name']!r} is not registered; registering needs {', '.join(missing)}")
        diff = {"before": {}, "after": {"name": p["name"], **want}}
        if module.check_mode:
            return {"changed": True, "diff": diff, "token_path": token_path}
        created = zone.call("POST", "/providers", {"name": p["name"], **want})
        _write_token(module, token_path, created["token"])
        provider = created["provider"]
        return {"changed": True, "diff": diff, "provider": provider, "provider_id": provider["id"],
                "token_path": token_path}

    if not _token_present(token_path):
        if not p["rotate_lost_token"]:
            module.fail_json(
                msg=f"provider {p['name']!r} (id {current['id']}) is registered but its token file {token_path} is "
                    "missing or empty; the API shows a token only once, so restore the file, or let the module "
                    "rotate the token (rotate_lost_token=true)")
        if module.check_mode:
            return {"changed": True, "provider": current, "provider_id": current["id"], "token_path": token_path,
                    "diff": {"before": {"token": "lost"}, "after": {"token": "rotated"}}}
        rotated = zone.call("POST", f"/providers/{current['id']}/token")
        _write_token(module, token_path, rotated["token"])
        module.warn(f"provider {p['name']!r} had no token file at {token_path}: its token was rotated")
        token_rotated = True
    else:
        token_rotated = False
    changes = {k: v for k, v in want.items() if current.get(k) != v}
    changed = token_rotated
    provider = current
    if changes:
        changed = True
        if not module.check_mode:
            provider = zone.call("PATCH", f"/providers/{current['id']}", changes)
    changed = _fix_token_perms(module, token_path, changed)  # in check mode: reports, never touches
    diff = {"before": {k: current.get(k) for k in changes}, "after": changes}
    return {"changed": changed, "diff": diff, "provider": provider, "provider_id": current["id"],
            "token_path": token_path}


def absent(module: AnsibleModule, zone: Zone) -> dict[str, Any]:
    p = module.params
    current = zone.find(p["name"])
    token_path = p["token_path"]
    has_token = bool(token_path) and os.path.exists(token_path)
    if current is None and not has_token:
        return {"changed": False}
    if not module.check_mode:
        if current is not None:
            try:
                zone.call("DELETE", f"/providers/{current['id']}")
            except ApiError as exc:
                if exc.status != 404:  # deleted meanwhile: the goal is reached
                    raise
        if has_token:
            os.unlink(token_path)
    before = {"name": p["name"]} if current is not None else {}
    return {"changed": True, "diff": {"before": before, "after": {}}}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "api_url": {"type": "str", "required": True},
            "api_token": {"type": "str", "required": True, "no_log": True},
            "name": {"type": "str", "required": True},
            "domain": {"type": "str"},
            "admin_email": {"type": "str"},
            "sftp_host": {"type": "str"},
            "sftp_port": {"type": "int"},
            "sftp_user": {"type": "str"},
            "storage_path": {"type": "str"},
            "support_limit": {"type": "int"},
            "region": {"type": "str"},
            "token_path": {"type": "path", "no_log": False},
            "token_owner": {"type": "str"},
            "token_group": {"type": "str"},
            "rotate_lost_token": {"type": "bool", "default": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "timeout": {"type": "int", "default": 10},
            "retries": {"type": "int", "default": 5},
            "retry_delay": {"type": "float", "default": 2.0},
            "ca_file": {"type": "path"},
        },
        required_if=[("state", "present", ("token_path",))],
        supports_check_mode=True,
    )
    zone = Zone(module)
    try:
        result = present(module, zone) if module.params["state"] == "present" else absent(module, zone)
    except ApiError as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

"""The zone's REST API as root, checked against the lab's site CA: what the lab modules that
only need root's calls share (test_lab_sandbox adds its task helpers to it)."""

from __future__ import annotations

from typing import Any

import requests

from tests.lab.inventory import api_base, ca_file, lab_secrets
from tests.lab.lab import Lab


class RootApi:
    """Every call fails the test with the error it got, unless its status is expected."""

    def __init__(self, lab: Lab) -> None:
        self.base = api_base(lab)
        self.session = requests.Session()
        # Per request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify.
        self.verify = str(ca_file(lab))
        self.session.headers["Authorization"] = f"Bearer {lab_secrets(lab)['root_secret']}"

    def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        resp = self.session.request(method, self.base + path, json=body, timeout=15, verify=self.verify)
        assert resp.status_code in expect, f"{method} {path} -> {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

"""A worker node as the API sees it: signed requests with the nodes secret, for farm tests."""

from __future__ import annotations

import json
from typing import Any

import requests

from control.node.signing import sign_headers
from control.web.routing import API_PREFIX
from tests.support.client import Api


class SignedNode:
    """Sends requests signed exactly as the runner and ``library/zonefarm_callback`` do."""

    def __init__(self, api: Api, name: str, secret: str) -> None:
        self.api = api
        self.name = name
        self.secret = secret
        self.last_headers: dict[str, str] = {}
        self.last_body = b""

    def request(self, method: str, path: str, body: Any = None, *, secret: str | None = None,
                timestamp: int | None = None, nonce: str | None = None, name: str | None = None,
                headers: dict[str, str] | None = None) -> requests.Response:
        raw = b"" if body is None else json.dumps(body).encode()
        signed = sign_headers(secret or self.secret, name or self.name, method, API_PREFIX + path, raw,
                              timestamp=timestamp, nonce=nonce)
        signed["Content-Type"] = "application/json"
        signed.update(headers or {})
        self.last_headers, self.last_body = signed, raw
        return self.api.request(method, path, data=raw, headers=signed)

    def replay(self, method: str, path: str) -> requests.Response:
        """Send the previous request again, byte for byte, headers and all."""
        return self.api.request(method, path, data=self.last_body, headers=self.last_headers)

    def registration(self, **overrides: Any) -> dict[str, Any]:
        body = {"name": self.name, "ansible_host": "127.0.0.1", "ansible_port": 22,
                "ansible_user": "root", "ansible_connection": "local", "python": "/usr/bin/python3",
                "workdir": f"/tmp/zf-{self.name}/work", "config_path": f"/tmp/zf-{self.name}/node.ini",
                "region": "default", "hostname": "localhost", "pid": 4242, "queues": ["default"],
                "concurrency": 2, "resources": {"cpu": 2, "memory": 1 << 30, "disk": 1 << 34},
                "labels": {"rack": "r1"}}
        body.update(overrides)
        return body

    def register(self, **overrides: Any) -> requests.Response:
        return self.request("POST", "/nodes/register", self.registration(**overrides))

    def heartbeat(self, **body: Any) -> requests.Response:
        return self.request("POST", f"/nodes/{self.name}/heartbeat", body)

    def callback(self, task_id: int, event: str, attempt: int, **data: Any) -> requests.Response:
        return self.request("POST", f"/tasks/{task_id}/callback", {"event": event, "attempt": attempt, **data})

"""A worker node as the API sees it: requests signed with its own key, derived from the nodes secret."""

from __future__ import annotations

import json
from typing import Any

import requests

from control.node.signing import derive_node_key, sign_headers
from control.web.routing import API_PREFIX
from tests.support.client import Api


class SignedNode:
    """Sends requests signed exactly as the runner and ``library/zonefarm_callback`` do.

    ``nodes_secret`` is the zone's: the node's key is derived from it the way the worker
    role does (``derive_node_key``), for ``generation``.
    """

    def __init__(self, api: Api, name: str, nodes_secret: str, generation: int = 0) -> None:
        self.api = api
        self.name = name
        self.nodes_secret = nodes_secret
        self.generation = generation
        self.key = derive_node_key(nodes_secret, name, generation)
        self.last_headers: dict[str, str] = {}
        self.last_body = b""

    def with_generation(self, generation: int) -> SignedNode:
        """The same node with the key of another generation (as after a rotation)."""
        return SignedNode(self.api, self.name, self.nodes_secret, generation)

    def request(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                timestamp: int | None = None, nonce: str | None = None, name: str | None = None,
                generation: int | None = None, headers: dict[str, str] | None = None) -> requests.Response:
        """``key``/``name``/``generation`` override what is signed with and as (forgeries)."""
        raw = b"" if body is None else json.dumps(body).encode()
        signed = sign_headers(key or self.key, name or self.name, method, API_PREFIX + path, raw,
                              self.generation if generation is None else generation,
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

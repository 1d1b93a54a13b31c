"""The worker side's one API client: the runner, the node agent and the provider agent use it.

Like Zimfarm's worker, every worker-side program talks to the zone through one client
class, so a request is addressed, authenticated and read in one place. Two kinds of
credential plug into it: ``NodeSignature`` (requests signed by ``control.node.signing``,
a fresh timestamp and nonce each) and ``Bearer`` (the provider agent's token).

Standard library only (``http.client``), on purpose: the runner is started per dispatch
round and its first ``started`` callback must leave within its grace of the launch;
importing ``requests`` alone costs about 80 ms there. One client holds one keep-alive
connection and is used by one thread at a time (the runner makes one per task).
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from control.node.signing import request_target, signed_request

if TYPE_CHECKING:
    from control.node.config import NodeConfig


class TransportError(ConnectionError):
    """The request did not get an answer: refused, reset, timed out, or a broken reply."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        """The JSON answer; ``{}`` for an empty body. Raises ValueError when it is not JSON."""
        return json.loads(self.body or b"{}")

    def error_message(self) -> str:
        """The message of the API's ``{"error": {...}}`` answer, else the start of the body."""
        try:
            return str(self.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return self.text[:300]


class Auth(Protocol):
    def prepare(self, method: str, api_url: str, route: str, body: bytes,
                query: dict[str, object] | None) -> tuple[str, dict[str, str]]:
        """``(path with query, headers)`` of one request."""


@dataclass(frozen=True)
class NodeSignature:
    """A node's requests, signed with its key by ``control.node.signing``."""

    node: str
    key: str = field(repr=False)
    generation: int = 0

    def prepare(self, method: str, api_url: str, route: str, body: bytes,
                query: dict[str, object] | None) -> tuple[str, dict[str, str]]:
        req = signed_request(self.key, self.node, method, api_url, route, body, query, self.generation)
        return req.path, req.headers


@dataclass(frozen=True)
class Anonymous:
    """No credential: for the one request that carries its own (enrolling with a join token)."""

    def prepare(self, method: str, api_url: str, route: str, body: bytes,
                query: dict[str, object] | None) -> tuple[str, dict[str, str]]:
        _, path = request_target(api_url, route, query)
        return path, {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True)
class Bearer:
    """A bearer token (the provider agent's provider token)."""

    token: str = field(repr=False)

    def prepare(self, method: str, api_url: str, route: str, body: bytes,
                query: dict[str, object] | None) -> tuple[str, dict[str, str]]:
        _, path = request_target(api_url, route, query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        return path, headers


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificate and host name checked, against ``ca_file`` (the site CA) or the system's CAs.

    There is no way to switch the check off: a client that accepts any certificate hands
    its node signature or provider token to whoever answers.
    """
    return ssl.create_default_context(cafile=ca_file or None)


class ApiClient:
    """Requests to ``<api_url>/api/v1<route>`` over one keep-alive connection.

    An ``https`` URL is verified against ``ca_file`` (empty: the system's CAs).
    """

    def __init__(self, api_url: str, auth: Auth, timeout: float = 30.0, ca_file: str = "") -> None:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._conn: http.client.HTTPConnection | None = None
        # Made once (reading the CA file is the costly part), before any request can fail on it.
        self._tls = tls_context(ca_file) if self._https else None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._tls is not None:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def request(self, method: str, route: str, payload: Any = None, *, query: dict[str, object] | None = None,
                timeout: float | None = None) -> Response:
        """One request; any answer is returned (the caller judges its status).

        ``payload`` is sent as JSON. A transport failure closes the connection (the next
        request opens a new one) and raises ``TransportError``.
        """
        body = b"" if payload is None else json.dumps(payload).encode()
        path, headers = self.auth.prepare(method, self.api_url, route, body, query)
        try:
            conn = self._connection(self.timeout if timeout is None else timeout)
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(f"{method} {route}: {type(exc).__name__}: {exc}") from None
        if resp.will_close:
            self.close()
        return Response(resp.status, data)

    def post(self, route: str, payload: Any = None, **kw: Any) -> Response:
        return self.request("POST", route, payload, **kw)

    def get(self, route: str, **kw: Any) -> Response:
        return self.request("GET", route, **kw)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def node_client(config: NodeConfig, timeout: float = 30.0) -> ApiClient:
    """The client a node's programs use: its API URL, signed as itself with its key."""
    return ApiClient(config.api_url, NodeSignature(config.name, config.node_key, config.key_generation), timeout,
                     ca_file=config.ca_file)

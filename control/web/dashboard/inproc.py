"""Call the REST application in-process, as the dashboard's only way to read or change anything.

Every page is built from the answers of the very routes curl uses, with the session's
bearer token, so the dashboard cannot see or do more than the API lets that token: one
source of truth and one set of access checks. A call is a WSGI call to the same Bottle
application (no socket, no thread), with the visitor's address so the API's per-address
rules (login throttling) see the real client.

Bottle keeps the current request and response in thread-locals that every Bottle
application shares. The dashboard is itself a Bottle application in the middle of a
request when it calls the API, so the call saves the dashboard's request and response
and puts them back afterwards.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import bottle

from control.web.routing import API_PREFIX

WsgiApp = Callable[..., Iterable[bytes]]


class ApiUnauthorized(Exception):
    """The session's token was refused (expired, revoked): the visitor must log in again."""


@dataclass
class ApiAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def message(self) -> str:
        """The API's error message (``{"error": {"message"}}``), or the status."""
        try:
            return str(self.json()["error"]["message"])
        except (ValueError, TypeError, KeyError):
            return f"HTTP {self.status}"


class _SavedBottleState:
    """The thread-local request and response of the Bottle application making the call."""

    _FIELDS = ("_status_line", "_status_code", "_cookies", "_headers", "body")

    def __enter__(self) -> _SavedBottleState:
        try:
            self.environ: dict[str, Any] | None = bottle.request.environ
        except RuntimeError:  # no Bottle request on this thread (a script, a test)
            self.environ = None
        self.response: dict[str, Any] = {}
        for name in self._FIELDS:
            try:
                self.response[name] = getattr(bottle.response, name)
            except (AttributeError, RuntimeError):  # nothing bound yet on this thread
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.environ is not None:
            bottle.request.bind(self.environ)
        for name, value in self.response.items():
            setattr(bottle.response, name, value)


class InProcessApi:
    """``api.get("/tasks", token, query={...})`` against the REST app; paths are under /api/v1."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def call(self, method: str, path: str, token: str | None = None, *,
             query: Mapping[str, Any] | None = None, json_body: Any = None,
             form: Mapping[str, str] | None = None, remote_addr: str = "",
             scheme: str = "http") -> ApiAnswer:
        body = b""
        ctype = ""
        if json_body is not None:
            body, ctype = json.dumps(json_body).encode(), "application/json"
        elif form is not None:
            body, ctype = urlencode(form).encode(), "application/x-www-form-urlencoded"
        pairs = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method.upper(),
            "SCRIPT_NAME": "",
            "PATH_INFO": API_PREFIX + path,
            "QUERY_STRING": urlencode(pairs),
            "SERVER_NAME": "dashboard.internal",
            "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": remote_addr,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": ctype,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if token:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        with _SavedBottleState():
            chunks = self.app(environ, start_response)
            try:
                data = b"".join(chunks)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        status, headers = started
        answer = ApiAnswer(int(status.split()[0]), {k.lower(): v for k, v in headers}, data)
        principal = environ.get("zonefarm.principal")
        if principal is not None:
            try:
                bottle.request.environ["zonefarm.principal"] = principal  # for the access log line
            except RuntimeError:
                pass
        return answer

    def get(self, path: str, token: str | None, **kw: Any) -> ApiAnswer:
        return self.call("GET", path, token, **kw)

    def post(self, path: str, token: str | None, **kw: Any) -> ApiAnswer:
        return self.call("POST", path, token, **kw)

    def delete(self, path: str, token: str | None, **kw: Any) -> ApiAnswer:
        return self.call("DELETE", path, token, **kw)

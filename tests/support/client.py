"""HTTP client for tests that checks every response against the OpenAPI document.

Each request is matched to its route template; the response's status must be one the
document declares (or an error), and its JSON body must validate against the declared
schema. So a route missing from the document, or answering differently from it,
fails whatever test exercises it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import requests

from control.web.openapi import build_document
from control.web.routing import API_PREFIX, ROUTES


class ContractError(AssertionError):
    pass


class OpenApiChecker:
    def __init__(self) -> None:
        self.doc = build_document()
        self.templates: list[tuple[re.Pattern[str], str]] = []
        slashed = {(spec.full_path, p) for spec in ROUTES for p in spec.path_params}  # may hold "/"
        for path in self.doc["paths"]:
            rx = "^" + re.sub(r"\\\{(\w+)\\\}", lambda m, path=path: ".+" if (path, m[1]) in slashed else "[^/]+",
                              re.escape(path)) + "$"
            self.templates.append((re.compile(rx), path))
        # Literal segments beat parameters: /auth/token before /users/{id}
        self.templates.sort(key=lambda t: t[1].count("{"))
        self.seen: set[tuple[str, str, int]] = set()

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {**schema, "components": self.doc["components"]}

    def check(self, method: str, url: str, resp: requests.Response) -> None:
        path = urlsplit(url).path
        if not path.startswith(API_PREFIX):
            return
        template = next((t for rx, t in self.templates if rx.match(path)), None)
        if template is None:
            if resp.status_code == 404:
                return
            raise ContractError(f"{method} {path} answered {resp.status_code} but no OpenAPI path matches")
        ops = self.doc["paths"][template]
        op = ops.get(method.lower())
        if op is None:
            if resp.status_code == 405:
                return
            raise ContractError(f"{method} {template} answered {resp.status_code} but is not in OpenAPI")
        status = resp.status_code
        self.seen.add((method.upper(), template, status))
        declared = op["responses"].get(str(status))
        if declared is None:
            if status >= 400:
                declared = op["responses"]["default"]
            else:
                raise ContractError(f"{method} {template} answered {status}, not declared in OpenAPI")
        content = declared.get("content")
        if content is None:
            if resp.content:
                raise ContractError(f"{method} {template} {status} declares no body but sent one")
            return
        ctype = resp.headers.get("Content-Type", "")
        if "application/octet-stream" in content and ctype.startswith("application/octet-stream"):
            return  # bytes: the test checks them itself
        if not ctype.startswith("application/json"):
            raise ContractError(f"{method} {template} {status} sent {ctype!r}, expected JSON")
        schema = content["application/json"]["schema"]
        try:
            jsonschema.validate(resp.json(), self._resolve(schema))
        except jsonschema.ValidationError as exc:
            raise ContractError(f"{method} {template} {status} body differs from OpenAPI: {exc.message}") from None


CHECKER: OpenApiChecker | None = None


def checker() -> OpenApiChecker:
    global CHECKER
    if CHECKER is None:
        CHECKER = OpenApiChecker()
    return CHECKER


class Api:
    """``api.get("/users", token=...)``; paths are relative to /api/v1."""

    def __init__(self, base_url: str, root_secret: str) -> None:
        self.base = base_url.rstrip("/")
        self.root_secret = root_secret
        self.session = requests.Session()

    def request(self, method: str, path: str, *, token: str | None = None, json: Any = None,
                data: Any = None, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, timeout: float = 30,
                check: bool = True) -> requests.Response:
        url = self.base + API_PREFIX + path
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        resp = self.session.request(method, url, json=json, data=data, headers=hdrs,
                                    params=params, timeout=timeout)
        if check:
            checker().check(method, resp.url, resp)
        return resp

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    # conveniences used across the suite
    @property
    def root(self) -> str:
        return self.root_secret

    def make_user(self, username: str, password: str = "password123", **extra: Any) -> dict[str, Any]:
        resp = self.post("/users", token=self.root, json={"username": username, "password": password, **extra})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def login(self, username: str, password: str = "password123") -> str:
        resp = self.post("/auth/token", data={"grant_type": "password", "username": username,
                                              "password": password})
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def user_with_token(self, username: str) -> tuple[dict[str, Any], str]:
        user = self.make_user(username)
        return user, self.login(username)

    def grant(self, *, user: int | None = None, group: int | None = None, task_type: str = "*",
              queue: str = "*", targets: str = "single") -> dict[str, Any]:
        """Root grants a user or a group the right to submit (submitting is a grant, not a given)."""
        holder = {"user": user} if user is not None else {"group": group}
        resp = self.post("/grants", token=self.root, json={**holder, "task_type": task_type, "queue": queue,
                                                           "targets": targets})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def submitter(self, username: str, **grant: Any) -> tuple[dict[str, Any], str]:
        """A user with a token and a grant (every type and queue unless ``grant`` narrows it)."""
        user, token = self.user_with_token(username)
        self.grant(user=user["id"], **grant)
        return user, token

"""A browser-less dashboard visitor: a cookie-keeping HTTP session that logs in through the
forms and reads the CSRF token out of the pages, as a browser would."""

from __future__ import annotations

import re
from typing import Any

import requests

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


class Visitor:
    """``Visitor(base).login("alice")``; ``base`` is the server's root URL (no /api/v1)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("allow_redirects", False)
        return self.http.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, data: dict[str, Any] | None = None, **kw: Any) -> requests.Response:
        kw.setdefault("allow_redirects", False)
        return self.http.post(self.base + path, data=data or {}, timeout=30, **kw)

    def login(self, username: str, password: str = "password123") -> requests.Response:
        token = csrf_of(self.get("/login").text)
        resp = self.post("/login", {"csrf": token, "username": username, "password": password})
        assert resp.status_code == 303, resp.text
        return resp

    def login_root(self, secret: str) -> requests.Response:
        token = csrf_of(self.get("/login").text)
        resp = self.post("/login/root", {"csrf": token, "root_secret": secret})
        assert resp.status_code == 303, resp.text
        return resp

    def csrf(self, path: str = "/tasks") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        return csrf_of(page.text)

    @property
    def token(self) -> str | None:
        return self.http.cookies.get("zf_session")

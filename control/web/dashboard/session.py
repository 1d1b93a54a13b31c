"""The dashboard's session: cookies that carry an API token, and the CSRF tokens forms carry.

The session cookie holds the bearer token the API issued at login, nothing else the
server keeps: logging out revokes that token through the API, so a copied cookie dies
with it. Cookies are HttpOnly (no script reads them), SameSite=Strict (no other site's
page sends them) and Secure when the dashboard is reached over HTTPS.

CSRF: every form carries an HMAC of the session token under a key derived from the
root secret (so every worker process agrees without sharing state), and a POST whose
value does not match is refused with 403. The login form, which comes before any
session, is bound the same way to a random cookie set with it.

A second cookie names who is logged in, for display only (and signed, bound to the
token): access is always decided by the API from the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import bottle

SESSION = "zf_session"
WHO = "zf_who"
LOGIN = "zf_login"
FLASH = "zf_flash"


class Keys:
    """HMAC keys derived from the root secret; a random one when there is no secret (dev only)."""

    def __init__(self, root_secret: str) -> None:
        seed = root_secret.encode() if root_secret else secrets.token_bytes(32)
        self.key = hmac.new(seed, b"zonefarm dashboard v1", hashlib.sha256).digest()

    def sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def check(self, purpose: str, value: str, signature: str | None) -> bool:
        return bool(signature) and hmac.compare_digest(self.sign(purpose, value), signature or "")


@dataclass(frozen=True)
class Session:
    token: str
    kind: str  # "root" | "user"
    name: str
    csrf: str

    @property
    def is_root(self) -> bool:
        return self.kind == "root"


def is_https(request: bottle.BaseRequest) -> bool:
    return request.urlparts.scheme == "https"


def _cookie_options(request: bottle.BaseRequest, max_age: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {"httponly": True, "samesite": "strict", "path": "/",
                               "secure": is_https(request)}
    if max_age is not None:
        options["max_age"] = max_age
    return options


def read_session(request: bottle.BaseRequest, keys: Keys) -> Session | None:
    token = request.get_cookie(SESSION)
    who = request.get_cookie(WHO) or ""
    if not token:
        return None
    label, _, signature = who.rpartition(".")
    kind, _, name = label.partition(":")
    if kind not in ("root", "user") or not keys.check("who", token + "\0" + label, signature):
        return None
    return Session(token=token, kind=kind, name=name, csrf=keys.sign("csrf", token))


def start_session(request: bottle.BaseRequest, response: bottle.BaseResponse, keys: Keys, *,
                  token: str, kind: str, name: str, max_age: int) -> None:
    options = _cookie_options(request, max_age)
    label = f"{kind}:{name}"
    signature = keys.sign("who", token + "\0" + label)
    response.set_cookie(SESSION, token, **options)
    response.set_cookie(WHO, f"{label}.{signature}", **options)
    response.delete_cookie(LOGIN, path="/")


def end_session(response: bottle.BaseResponse) -> None:
    for name in (SESSION, WHO):
        response.delete_cookie(name, path="/")


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")


def login_nonce(request: bottle.BaseRequest, response: bottle.BaseResponse, keys: Keys) -> str:
    """The CSRF token of the login form, bound to a random cookie set (or kept) with it."""
    nonce = request.get_cookie(LOGIN)
    if not nonce or len(nonce) > 64:
        nonce = secrets.token_urlsafe(24)
        response.set_cookie(LOGIN, nonce, **_cookie_options(request, 3600))
    return keys.sign("login", nonce)


def login_csrf_ok(request: bottle.BaseRequest, keys: Keys, submitted: str | None) -> bool:
    nonce = request.get_cookie(LOGIN)
    return bool(nonce) and keys.check("login", nonce or "", submitted)


def flash(request: bottle.BaseRequest, response: bottle.BaseResponse, kind: str, text: str) -> None:
    """A message for the next page (after a redirect), in a short-lived cookie."""
    raw = json.dumps({"kind": kind, "text": text[:500]}).encode()
    response.set_cookie(FLASH, base64.urlsafe_b64encode(raw).decode(), **_cookie_options(request, 60))


def take_flash(request: bottle.BaseRequest, response: bottle.BaseResponse) -> dict[str, str] | None:
    value = request.get_cookie(FLASH)
    if not value:
        return None
    response.delete_cookie(FLASH, path="/")
    try:
        data = json.loads(base64.urlsafe_b64decode(value.encode()))
        return {"kind": "error" if data.get("kind") == "error" else "ok", "text": str(data["text"])}
    except (ValueError, TypeError, KeyError):
        return None

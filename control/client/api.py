"""HTTP to the zonefarm API: one requests session, the API's error messages, token refresh.

Where the token comes from, in order: ``ZONEFARM_TOKEN`` (with ``ZONEFARM_URL``, for
scripts; never refreshed), else the credentials file ``zonefarm login`` wrote. A stored
token is only ever sent to the URL it was issued by: ``ZONEFARM_URL`` naming another
API is refused rather than handing that API our token.

A stored access token that has expired (by its recorded expiry, or because the API
answers 401) is exchanged once for a new one with the stored refresh token
(``POST /auth/token``, ``grant_type=refresh_token``), and the request is repeated. TLS is
always verified: against the system's CAs, or the bundle ``--ca-file`` or
``ZONEFARM_CA_FILE`` names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import requests

from control.client import credentials
from control.client.credentials import Credentials, CredentialsError
from control.client.output import clean

API_PREFIX = "/api/v1"
TIMEOUT = (10.0, 60.0)  # connect, read
USER_AGENT = "zonefarm-cli/0.1"
EXPIRY_MARGIN = 5.0  # refresh this long before the recorded expiry: the clocks may differ a little


class ApiFailure(click.ClickException):
    """The API refused, or could not be reached: exit code 3, the API's message on stderr."""

    exit_code = 3

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SetupError(click.ClickException):
    """Not logged in, or an unusable credentials file: a usage problem (exit 2), not the API's."""

    exit_code = 2


def normalise_url(raw: str) -> str:
    """``https://zone.example.org`` or ``.../api/v1`` (trailing slash or not) -> ``.../api/v1``."""
    try:
        parts = urlsplit(raw.strip())
        host = parts.hostname
        _ = parts.port  # a bad port raises here rather than on the first request
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not a valid URL", param_hint="URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise click.BadParameter(f"{raw!r} is not an http(s) URL", param_hint="URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise click.BadParameter("give the API's URL without credentials, query or fragment", param_hint="URL")
    base = parts.path.rstrip("/")
    if not base.endswith(API_PREFIX):
        base += API_PREFIX
    return urlunsplit((parts.scheme, parts.netloc, base, "", ""))


def error_message(resp: requests.Response) -> str:
    """The API's ``{"error": {"message"}}``; something readable for anything else (a proxy's page).

    Messages quote names other users chose, so control characters are escaped.
    """
    try:
        body = resp.json()
        message = body["error"]["message"]
        if isinstance(message, str) and message:
            return f"{clean(message)} (HTTP {resp.status_code})"
    except (ValueError, KeyError, TypeError):
        pass
    return f"HTTP {resp.status_code} {resp.reason or ''} from {resp.url} (not a zonefarm API answer)".replace("  ", " ")


def _verify(ca_file: str | None) -> str | bool:
    return ca_file if ca_file else True


def new_session(ca_file: str | None) -> requests.Session:
    session = requests.Session()
    session.verify = _verify(ca_file)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    return session


def send(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request; network and TLS failures become ApiFailure with a cause and no token in it.

    ``verify`` is passed on every request: requests lets ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``
    in the environment override ``Session.verify``, which would drop the ``--ca-file`` the user gave.
    """
    kwargs.setdefault("timeout", TIMEOUT)
    kwargs.setdefault("verify", session.verify)
    try:
        return session.request(method, url, **kwargs)
    except requests.exceptions.SSLError as exc:
        raise ApiFailure(f"TLS failure talking to {url}: {_reason(exc)}; "
                         "give the CA bundle with --ca-file or ZONEFARM_CA_FILE") from None
    except requests.exceptions.Timeout:
        raise ApiFailure(f"{url}: no answer in time") from None
    except requests.exceptions.ConnectionError as exc:
        raise ApiFailure(f"cannot reach {url}: {_reason(exc)}") from None
    except requests.exceptions.RequestException as exc:
        raise ApiFailure(f"{url}: {type(exc).__name__}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The innermost cause (urllib3 nests several), without the pool's repr."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = str(cause) or type(cause).__name__
    return text.split(": ", 1)[-1] if text.startswith("<") else text


class Client:
    """Calls on one API with one bearer token; refreshes a stored token when it runs out."""

    def __init__(self, url: str, token: str, *, ca_file: str | None = None, stored: Credentials | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.token = token
        self.stored = stored  # set when the token came from the credentials file: only then is it refreshed
        self.env = env
        self.session = new_session(ca_file)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, timeout: Any = TIMEOUT) -> Any:
        """The answer's JSON (None for an empty body); any error status raises ApiFailure.

        At most one refresh per request: a token refused right after a refresh is not the
        expiry's fault, and spending the next refresh token on it would only repeat that.
        """
        refreshed, problem = False, None
        stored = self.stored
        if stored is not None and stored.refresh_token and stored.expires_at is not None \
                and stored.expires_at - EXPIRY_MARGIN <= time.time():
            problem = self._refresh(self.token)  # known to be expired: spare the API a request it would refuse
            refreshed = problem is None
        resp = self._send(method, path, params=params, json=json, timeout=timeout)
        if resp.status_code == 401 and self.stored is not None and not refreshed:
            if problem is None:
                problem = self._refresh(self.token)
            if problem is None:
                resp = self._send(method, path, params=params, json=json, timeout=timeout)
        if resp.status_code == 401 and problem is not None:
            raise ApiFailure(f"{error_message(resp)}; {problem}", 401)
        if resp.status_code >= 400:
            raise ApiFailure(error_message(resp), resp.status_code)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiFailure(f"{resp.url} answered {resp.status_code} with a body that is not JSON") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return send(self.session, method, self.url + path, headers=headers, **kw)

    def _refresh(self, failed: str) -> str | None:
        """Replace the stored access token; None on success, else why it could not be done.

        Under the lock the file is read again: when another command has refreshed in the
        meantime its new token is taken as it is, so the single-use refresh token is
        spent once.
        """
        relogin = f"run `zonefarm login {self.url}` again"
        with credentials.refresh_lock(self.env):
            try:
                current = credentials.load(self.env)
            except CredentialsError as exc:
                return f"{exc}; {relogin}"
            if current is None or current.url != self.url:
                return f"the stored login is gone; {relogin}"
            if current.token != failed:
                self.token, self.stored = current.token, current
                return None
            if not current.refresh_token:
                return f"no refresh token is stored; {relogin}"
            resp = send(self.session, "POST", self.url + "/auth/token",
                        data={"grant_type": "refresh_token", "refresh_token": current.refresh_token})
            if resp.status_code in (400, 401):
                # A refused refresh token will never work again: forget it, keep the rest.
                credentials.save(replace(current, refresh_token=None), self.env)
                self.stored = replace(current, refresh_token=None)
                return f"the refresh token was refused too ({error_message(resp)}); {relogin}"
            if resp.status_code != 200:  # the API's trouble, not the token's: keep it for the next try
                raise ApiFailure(f"renewing the expired token failed: {error_message(resp)}", resp.status_code)
            fresh = token_credentials(self.url, resp, current.username, current.ca_file)
            credentials.save(fresh, self.env)
            self.token, self.stored = fresh.token, fresh
            return None


def token_credentials(url: str, resp: requests.Response, username: str | None, ca_file: str | None) -> Credentials:
    """Credentials from a ``POST /auth/token`` answer (password or refresh grant).

    A refresh token is single use, so an answer without a new one leaves none stored.
    """
    try:
        body = resp.json()
        token = body["access_token"]
        expires_in = body.get("expires_in")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ApiFailure(f"{resp.url} answered {resp.status_code} without an access token") from None
    expires_at = time.time() + float(expires_in) if isinstance(expires_in, int | float) else None
    return Credentials(url=url, token=token, refresh_token=body.get("refresh_token") or None,
                       expires_at=expires_at, username=username, ca_file=ca_file)


def connect(ca_file: str | None, env: Mapping[str, str] | None = None) -> Client:
    """A client for the current login: ``ZONEFARM_TOKEN`` first, else the credentials file."""
    env = os.environ if env is None else env
    env_url = normalise_url(env["ZONEFARM_URL"]) if env.get("ZONEFARM_URL") else None
    env_token = env.get("ZONEFARM_TOKEN") or None
    try:
        stored = credentials.load(env)
    except CredentialsError as exc:
        if env_token is None:
            raise SetupError(str(exc)) from None
        stored = None
    if env_token is not None:
        url = env_url or (stored.url if stored else None)
        if url is None:
            raise SetupError("ZONEFARM_TOKEN is set but ZONEFARM_URL is not (and no login names a URL)")
        stored_ca = stored.ca_file if stored and stored.url == url else None
        return Client(url, env_token, ca_file=ca_file or stored_ca, env=env)
    if stored is None:
        raise SetupError(f"not logged in: run `zonefarm login URL` (no {credentials.path(env)})")
    if env_url is not None and env_url != stored.url:
        raise SetupError(f"the stored login is for {stored.url}, not ZONEFARM_URL={env_url}: "
                         "log in there, or set ZONEFARM_TOKEN too")
    return Client(stored.url, stored.token, ca_file=ca_file or stored.ca_file, stored=stored, env=env)

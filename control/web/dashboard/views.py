"""The dashboard's pages: server-rendered HTML over the REST API, with htmx polling for live parts.

Each handler reads and acts only through ``InProcessApi`` with the session's token, so
what a page shows and what a button does are exactly what the REST routes allow that
token; a refusal from the API is shown as the page's answer (403, 404) rather than
decided here. Live parts re-render a fragment every second and answer 204 (htmx swaps
nothing) while it has not changed, so keyboard focus stays where it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import bottle
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from control.core.config import Settings
from control.farm.models import TASK_STATES, TERMINAL
from control.web.dashboard import forms
from control.web.dashboard.inproc import ApiAnswer, InProcessApi, WsgiApp
from control.web.dashboard.session import (
    Keys,
    Session,
    csrf_ok,
    end_session,
    flash,
    is_https,
    login_csrf_ok,
    login_nonce,
    read_session,
    start_session,
    take_flash,
)
from control.web.dashboard.workload import WorkloadPages

STATIC = Path(__file__).parent / "static"
PAGE = 50
HISTORY = 100  # changes a page of the feed shows
CARDS = 10  # spaces a registry page shows, each with three API reads of its own
# Groups a registry page shows: each costs two reads (its child groups, its effective members
# with their chains), a read costing 10 to 50 ms on a busy machine, and the page must stay
# under 300 ms (BENCHMARKS.md "Dashboard").
GROUP_CARDS = 4
LOG_SHOWN = 256 * 1024  # characters of a long log shown on the page; the API has the rest
LOG_PAGE = 1024 * 1024  # the most text GET /tasks/{id}/log answers at once: a shorter page is the end
WITHIN = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
NODE_ACTIONS = ("cordon", "uncordon", "drain")


_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9_.~%/?&=+:-]*")


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a plain ASCII path with no scheme, host, ``//``, backslash,
    space or control character (browsers drop a tab, so ``/<TAB>/evil.example`` would be
    ``//evil.example``: an open redirect)."""
    if not target or not _LOCAL_PATH.fullmatch(target):
        return "/tasks"
    return target


def _parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _when(value: str | None) -> str:
    moment = _parse_iso(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _clock(value: str | None) -> str:
    """The time of day (UTC); the task's date is shown once, with when it was submitted."""
    moment = _parse_iso(value)
    return moment.astimezone(UTC).strftime("%H:%M:%S") if moment else "—"


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def _resource(value: Any, key: str) -> str:
    if any(word in key for word in ("mem", "disk", "bytes", "size")):
        return _bytes(value)
    return str(value)


class Dashboard(WorkloadPages):
    """The Bottle application serving ``/``: pages, fragments, forms and static assets (the
    workload pages, templates, schedules and webhooks, in ``workload.WorkloadPages``)."""

    def __init__(self, api_app: WsgiApp, settings: Settings) -> None:
        self.api = InProcessApi(api_app)
        self.settings = settings
        self.keys = Keys(settings.root_secret)
        self.env = Environment(loader=PackageLoader("control.web.dashboard", "templates"),
                               autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                               lstrip_blocks=True)
        self.env.filters.update(when=_when, clock=_clock, age=_age, bytes=_bytes, resource=_resource,
                                pretty=lambda v: json.dumps(v, indent=2, sort_keys=True))
        self.env.globals.update(STATES=TASK_STATES, TERMINAL=TERMINAL)
        self.app = bottle.Bottle(catchall=True)
        self.app.default_error_handler = self._error_page  # type: ignore[method-assign]
        self._install()

    # ---- WSGI --------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def with_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {k.lower() for k, _ in headers}
            for name, value in (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                                ("Referrer-Policy", "same-origin"), ("X-Frame-Options", "DENY")):
                if name.lower() not in present:
                    headers.append((name, value))
            if "cache-control" not in present:
                headers.append(("Cache-Control", "no-store"))
            return start_response(status, headers, exc_info)

        return self.app(environ, with_headers)

    # ---- plumbing ----------------------------------------------------------------------

    def _install(self) -> None:
        r = self.app.route
        r("/", "GET", lambda: bottle.redirect("/tasks", 303))
        r("/static/<path:path>", "GET", self.static)
        r("/login", "GET", self.login_page)
        r("/login", "POST", self.login)
        r("/login/root", "POST", self.login_root)
        r("/logout", "POST", self.logout)
        r("/tasks", "GET", self.tasks_page)
        r("/tasks/live", "GET", self.tasks_live)
        r("/tasks/<task_id:int>", "GET", self.task_page)
        r("/tasks/<task_id:int>/live", "GET", self.task_live)
        r("/tasks/<task_id:int>/cancel", "POST", self.task_cancel)
        r("/tasks/<task_id:int>/resubmit", "POST", self.task_resubmit)
        r("/submit", "GET", self.submit_page)
        r("/submit", "POST", self.submit)
        r("/nodes", "GET", self.nodes_page)
        r("/nodes/live", "GET", self.nodes_live)
        r("/nodes/<name>/<action>", "POST", self.node_action)
        r("/queues", "GET", self.queues_page)
        r("/queues/live", "GET", self.queues_live)
        r("/registry", "GET", lambda: bottle.redirect("/registry/users", 303))
        r("/registry/<tab>", "GET", self.registry_page)
        r("/changes", "GET", self.changes_page)
        r("/changes/live", "GET", self.changes_live)
        self.install_workload()

    @staticmethod
    def _htmx() -> bool:
        return bottle.request.get_header("HX-Request") == "true"

    def _to_login(self) -> NoReturn:
        if self._htmx():
            res = bottle.response.copy(cls=bottle.HTTPResponse)
            res.status = 204
            res.set_header("HX-Redirect", "/login")
            raise res
        path = bottle.request.fullpath
        qs = bottle.request.query_string
        target = path + (f"?{qs}" if qs else "")
        bottle.redirect("/login?next=" + quote(target, safe="/"), 303)
        raise AssertionError  # redirect raised

    def _session(self) -> Session:
        session = read_session(bottle.request, self.keys)
        if session is None:
            self._to_login()
        return session

    def _call(self, session: Session | None, method: str, path: str, **kw: Any) -> ApiAnswer:
        answer = self.api.call(method, path, session.token if session else None,
                               remote_addr=bottle.request.remote_addr or "",
                               scheme="https" if is_https(bottle.request) else "http", **kw)
        if answer.status == 401 and session is not None:
            end_session(bottle.response)
            flash(bottle.request, bottle.response, "error", "Your session has ended; log in again.")
            self._to_login()
        return answer

    def _get(self, session: Session, path: str, **query: Any) -> Any:
        """The JSON of a read the page cannot do without; the API's refusal becomes the page."""
        answer = self._call(session, "GET", path, query=query)
        if not answer.ok:
            self._fail(session, answer.status, answer.message)
        return answer.json()

    def _try(self, session: Session, path: str, **query: Any) -> Any | None:
        """The JSON of an optional read; None when the API refuses it."""
        answer = self._call(session, "GET", path, query=query)
        return answer.json() if answer.ok else None

    def _context(self, session: Session | None, **ctx: Any) -> dict[str, Any]:
        return {"session": session, "csrf": session.csrf if session else "", "flash": None,
                "path": bottle.request.path, **ctx}

    def _render(self, template: str, session: Session | None, *, status: int = 200, **ctx: Any) -> str:
        bottle.response.status = status
        bottle.response.content_type = "text/html; charset=utf-8"
        context = self._context(session, **ctx)
        context["flash"] = take_flash(bottle.request, bottle.response)
        return self.env.get_template(template).render(**context)

    def _fragment(self, template: str, session: Session | None, **ctx: Any) -> str:
        return self.env.get_template(template).render(**self._context(session, **ctx))

    def _fail(self, session: Session | None, status: int, message: str) -> NoReturn:
        if self._htmx():  # a live fragment: keep what is shown, stop nothing
            res = bottle.response.copy(cls=bottle.HTTPResponse)
            res.status = 204
            raise res
        titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid request"}
        body = self._render("error.html", session, status=status, title=titles.get(status, "Error"),
                            message=message)
        res = bottle.response.copy(cls=bottle.HTTPResponse)
        res.status = status
        res.body = body
        raise res

    def _error_page(self, err: bottle.HTTPError) -> str:
        session = read_session(bottle.request, self.keys)
        title = {404: "Not found", 405: "Method not allowed"}.get(err.status_code, "Error")
        message = f"No page at {bottle.request.path}." if err.status_code == 404 else "Something went wrong."
        if err.status_code >= 500:
            logging.getLogger("zonefarm.dashboard").error("error on %s %s: %s", bottle.request.method,
                                                          bottle.request.path, err.exception,
                                                          exc_info=err.exception)
        return self._render("error.html", session, status=err.status_code, title=title, message=message)

    def _check_csrf(self, session: Session) -> None:
        if not csrf_ok(session, bottle.request.forms.getunicode("csrf")):
            self._fail(session, 403, "This form has expired or did not come from this dashboard "
                                     "(missing or wrong CSRF token). Reload the page and try again.")

    def _live(self, session: Session, dom_id: str, path: str, query: dict[str, Any], template: str,
              ctx: dict[str, Any], *, every: str = "1s", active: bool = True,
              also: str = "") -> tuple[Markup, str]:
        """A polled block: its content, and a wrapper that asks for it again with its version
        (a digest of the content and of ``also``, content sent with it out of band)."""
        inner = self._fragment(template, session, **ctx)
        version = hashlib.sha256((inner + also).encode()).hexdigest()[:16]
        params = {k: v for k, v in query.items() if v not in (None, "") and k != "v"}
        url = path + "?" + urlencode({**params, "v": version})
        wrapper = self._fragment("_live.html", session, dom_id=dom_id, url=url, every=every,
                                 active=active, inner=Markup(inner))  # noqa: S704 - rendered with autoescape
        return Markup(wrapper), version  # noqa: S704

    @staticmethod
    def _unchanged(version: str) -> bool:
        return bottle.request.query.getunicode("v") == version

    @staticmethod
    def _no_change() -> str:
        bottle.response.status = 204
        return ""

    # ---- static and login --------------------------------------------------------------

    def static(self, path: str) -> Any:
        res = bottle.static_file(path, root=str(STATIC))
        if isinstance(res, bottle.HTTPResponse) and res.status_code == 200:
            res.set_header("Cache-Control", "public, max-age=3600")
        return res

    def login_page(self, error: str | None = None, status: int = 200) -> str:
        nonce = login_nonce(bottle.request, bottle.response, self.keys)
        return self._render("login.html", None, status=status, login_csrf=nonce, error=error,
                            next=_safe_next(bottle.request.params.getunicode("next")),
                            username=bottle.request.forms.getunicode("username") or "")

    def _login_refused(self) -> str | None:
        """The login page again, 403, when the form's CSRF token does not match its cookie."""
        if login_csrf_ok(bottle.request, self.keys, bottle.request.forms.getunicode("csrf")):
            return None
        return self.login_page("The login form expired or did not come from this dashboard; try again.", 403)

    def login(self) -> Any:
        if (refused := self._login_refused()) is not None:
            return refused
        username = (bottle.request.forms.getunicode("username") or "").strip()
        password = bottle.request.forms.getunicode("password") or ""
        answer = self._call(None, "POST", "/auth/token",
                            form={"grant_type": "password", "username": username, "password": password,
                                  "refresh": "false"})
        if not answer.ok:
            message = answer.message if answer.status in (401, 422, 429) else "Login failed."
            if answer.status == 422:
                message = "Give a username and a password."
            retry = answer.headers.get("retry-after")
            if retry:
                bottle.response.set_header("Retry-After", retry)
            return self.login_page(message, 429 if answer.status == 429 else 401)
        token = answer.json()
        # No refresh token is asked for: the session keeps only the access token, which logout revokes.
        start_session(bottle.request, bottle.response, self.keys, token=token["access_token"], kind="user",
                      name=username, max_age=int(token.get("expires_in") or self.settings.token_ttl))
        bottle.redirect(_safe_next(bottle.request.forms.getunicode("next")), 303)

    def login_root(self) -> Any:
        if (refused := self._login_refused()) is not None:
            return refused
        secret = bottle.request.forms.getunicode("root_secret") or ""
        answer = self.api.call("POST", "/auth/root-token", secret or None,
                               remote_addr=bottle.request.remote_addr or "")
        if not answer.ok:
            return self.login_page("The root secret was refused.", 401)
        token = answer.json()
        start_session(bottle.request, bottle.response, self.keys, token=token["access_token"], kind="root",
                      name="administrator", max_age=int(token.get("expires_in") or self.settings.token_ttl))
        bottle.redirect(_safe_next(bottle.request.forms.getunicode("next")), 303)

    def logout(self) -> Any:
        session = read_session(bottle.request, self.keys)
        if session is not None:
            self._check_csrf(session)
            self.api.call("DELETE", "/auth/token", session.token, remote_addr=bottle.request.remote_addr or "")
        end_session(bottle.response)
        flash(bottle.request, bottle.response, "ok", "You are logged out.")
        bottle.redirect("/login", 303)

    # ---- tasks -------------------------------------------------------------------------

    def _task_filters(self, session: Session) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """The form's values, the API query they make, and problems to show."""
        q = bottle.request.query
        form = {k: (q.getunicode(k) or "").strip() for k in
                ("state", "queue", "node", "owner", "type", "within", "after", "before", "offset")}
        problems: list[str] = []
        query: dict[str, Any] = {"limit": PAGE}
        if form["state"] in TASK_STATES:
            query["state"] = form["state"]
        for key, api_key in (("queue", "queue"), ("node", "node"), ("type", "name")):
            if form[key]:
                query[api_key] = form[key]
        if form["owner"]:
            owner = self._user_id(session, form["owner"])
            if owner is None:
                problems.append(f"No user named {form['owner']!r}.")
                owner = 2**31 - 1  # nobody: an empty list, through the same route
            query["owner"] = owner
        if form["within"] in WITHIN:
            since = datetime.now(UTC) - timedelta(seconds=WITHIN[form["within"]])
            query["created_after"] = since.isoformat()
        for key, api_key, label in (("after", "created_after", "From"), ("before", "created_before", "Until")):
            if form[key]:
                moment = _parse_iso(form[key])
                if moment is None:
                    problems.append(f"{label}: not a date and time.")
                    continue
                moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
                if api_key == "created_after" and "created_after" in query:
                    moment = max(moment, _parse_iso(query["created_after"]) or moment)
                query[api_key] = moment.isoformat()
        offset = int(form["offset"]) if form["offset"].isdigit() else 0
        query["offset"] = offset
        return form, query, problems

    def _user_id(self, session: Session, username: str) -> int | None:
        """A username's id through ``GET /users``."""
        found = self._try(session, "/users", name=username, limit=500) or {"items": []}
        return next((u["id"] for u in found["items"] if u["username"] == username), None)

    def _usernames(self, session: Session, ids: set[int]) -> dict[int, str]:
        """Usernames for ids: from one page of ``GET /users`` when there are several (it holds
        every user of most sites), then one ``GET /users/{id}`` for each still missing."""
        names: dict[int, str] = {}
        if len(ids) > 3:
            listed = self._try(session, "/users", limit=500) or {"items": []}
            names = {u["id"]: u["username"] for u in listed["items"] if u["id"] in ids}
        for uid in sorted(ids - set(names)):
            user = self._try(session, f"/users/{uid}")
            names[uid] = user["username"] if user else f"user {uid}"
        return names

    def _tasks_data(self, session: Session) -> dict[str, Any]:
        form, query, problems = self._task_filters(session)
        api_query = {k: v for k, v in query.items() if v is not None}
        page = self._get(session, "/tasks", **api_query)
        count_query = {k: v for k, v in api_query.items() if k not in ("state", "offset", "limit")}
        counted = self._get(session, "/tasks/counts", **count_query)
        owners = self._usernames(session, {t["owner"] for t in page["items"] if t["owner"] is not None})
        base = {k: v for k, v in form.items() if v and k != "offset"}
        offset = query["offset"]
        prev_url = ("/tasks?" + urlencode({**base, "offset": max(0, offset - PAGE)})) if offset > 0 else None
        next_url = (("/tasks?" + urlencode({**base, "offset": offset + PAGE}))
                    if offset + PAGE < page["total"] else None)
        state_urls = {s: "/tasks?" + urlencode({**{k: v for k, v in base.items() if k != "state"}, "state": s})
                      for s in TASK_STATES}
        all_url = "/tasks?" + urlencode({k: v for k, v in base.items() if k != "state"})
        return {"form": form, "problems": problems, "page": page, "counts": counted["counts"],
                "total_all": counted["total"], "owners": owners, "prev_url": prev_url,
                "next_url": next_url, "state_urls": state_urls, "all_url": all_url,
                "first": offset + 1 if page["items"] else 0, "last": offset + len(page["items"])}

    def tasks_page(self) -> str:
        session = self._session()
        data = self._tasks_data(session)
        types = [t["name"] for t in (self._try(session, "/task-types") or [])]
        live, _ = self._live(session, "tasks-live", "/tasks/live", data["form"], "_tasks.html", data)
        return self._render("tasks.html", session, live=live, types=types, **data)

    def tasks_live(self) -> str:
        session = self._session()
        data = self._tasks_data(session)
        live, version = self._live(session, "tasks-live", "/tasks/live", data["form"], "_tasks.html", data)
        return self._no_change() if self._unchanged(version) else str(live)

    def _task_data(self, session: Session, task_id: int) -> dict[str, Any]:
        task = self._get(session, f"/tasks/{task_id}")
        events = self._get(session, f"/tasks/{task_id}/events")
        owner = self._usernames(session, {task["owner"]}).get(task["owner"]) if task["owner"] else "root"
        space = self._try(session, f"/spaces/{task['space']}") if task["space"] else None
        return {"task": task, "events": events, "attempts": _attempts(events), "owner_name": owner,
                "space": space, "finished": task["state"] in TERMINAL}

    def _read_log(self, session: Session, task_id: int, offset: int,
                  calls: int = 1) -> tuple[str, int, bool, bool]:
        """Text from ``offset`` (at most ``calls`` pages of the API's log route), the next
        offset, whether the log is complete, and whether its start was cut (only the last
        LOG_SHOWN characters are kept; the rest of a long log comes with the next polls)."""
        parts: list[str] = []
        size = 0
        cut = False
        complete = False
        for _ in range(calls):
            answer = self._call(session, "GET", f"/tasks/{task_id}/log", query={"offset": offset})
            if not answer.ok:
                break
            log = answer.json()
            parts.append(log["text"])
            size += len(log["text"])
            offset = log["next_offset"]
            complete = log["complete"]
            while size > LOG_SHOWN and len(parts) > 1:
                size -= len(parts.pop(0))
                cut = True
            if complete or len(log["text"]) < LOG_PAGE:
                break
        text = "".join(parts)
        if len(text) > LOG_SHOWN:
            text, cut = text[-LOG_SHOWN:], True
        return text, offset, complete, cut

    def _task_live(self, session: Session, task_id: int, data: dict[str, Any],
                   offset: int, complete: bool) -> tuple[Markup, str, str]:
        """The status block, its version, and the attempts and events sent with it out of band."""
        active = not (data["finished"] and complete)
        history = self._fragment("_task_history.html", session, oob=True, **data)
        live, version = self._live(session, "task-live", f"/tasks/{task_id}/live", {"offset": offset},
                                   "_task.html", data, active=active, also=history)
        return live, version, history

    def task_page(self, task_id: int) -> str:
        session = self._session()
        data = self._task_data(session, task_id)
        text, offset, complete, cut = self._read_log(session, task_id, 0, calls=8)
        live, _, _ = self._task_live(session, task_id, data, offset, complete)
        return self._render("task.html", session, live=live, log_text=text, log_cut=cut,
                            log_complete=complete, oob=False, **data)

    def task_live(self, task_id: int) -> str:
        session = self._session()
        data = self._task_data(session, task_id)
        start = bottle.request.query.getunicode("offset") or "0"
        offset = int(start) if start.isdigit() else 0
        text, next_offset, complete, _ = self._read_log(session, task_id, offset)
        live, version, history = self._task_live(session, task_id, data, next_offset, complete)
        if not text and self._unchanged(version) and next_offset == offset:
            return self._no_change()
        return str(live) + history + self._fragment("_log_append.html", session, text=text, complete=complete)

    def task_cancel(self, task_id: int) -> Any:
        session = self._session()
        self._check_csrf(session)
        answer = self._call(session, "POST", f"/tasks/{task_id}/cancel")
        if answer.ok:
            flash(bottle.request, bottle.response, "ok", f"Cancel requested for task {task_id}.")
        elif answer.status in (403, 404):
            self._fail(session, answer.status, answer.message)
        else:
            flash(bottle.request, bottle.response, "error", answer.message)
        bottle.redirect(f"/tasks/{task_id}", 303)

    def task_resubmit(self, task_id: int) -> Any:
        session = self._session()
        self._check_csrf(session)
        task = self._get(session, f"/tasks/{task_id}")
        if task["state"] not in TERMINAL:
            flash(bottle.request, bottle.response, "error", "Only a finished task can be resubmitted.")
            bottle.redirect(f"/tasks/{task_id}", 303)
        target = task["target"]
        body: dict[str, Any] = {"name": task["name"], "params": task["params"], "queue": task["queue"],
                                "priority": task["priority"], "timeout": task["timeout"],
                                "max_attempts": task["max_attempts"]}
        if target["kind"] == "node":
            body["target"] = {"node": target["value"]}
        elif target["kind"] == "region":
            body["target"] = {"region": target["value"]}
        elif target["kind"] == "all":
            body["target"] = {"all": True}
        if target.get("labels"):
            body["target"] = {**body.get("target", {}), "labels": target["labels"]}
        if task.get("resources"):
            body["resources"] = task["resources"]
        if task["space"] is not None:
            body["space"] = task["space"]
        answer = self._call(session, "POST", "/tasks", json_body=body)
        if not answer.ok:
            flash(bottle.request, bottle.response, "error", f"Resubmit refused: {answer.message}")
            bottle.redirect(f"/tasks/{task_id}", 303)
        new = answer.json()
        flash(bottle.request, bottle.response, "ok", f"Resubmitted task {task_id} as task {new['id']}.")
        bottle.redirect(f"/tasks/{new['id']}", 303)

    # ---- submit ------------------------------------------------------------------------

    def _submit_context(self, session: Session, chosen: str) -> dict[str, Any]:
        # types the zone makes tasks of itself (transfers) are listed by the API but refused on submission
        types = [t for t in self._get(session, "/task-types")
                 if not (t["params_schema"] or {}).get("x-zonefarm-internal")]
        names = [t["name"] for t in types]
        if chosen not in names:
            chosen = "shell" if "shell" in names else (names[0] if names else "")
        schema = next((t["params_schema"] for t in types if t["name"] == chosen), None)
        spaces = (self._try(session, "/spaces", limit=500) or {"items": []})["items"]
        nodes = (self._try(session, "/nodes", limit=1000) or {"items": []})["items"]
        return {"types": names, "chosen": chosen, "schema": schema, "fields": forms.fields_for(schema),
                "spaces": spaces, "node_names": [n["name"] for n in nodes],
                "regions": sorted({n["region"] for n in nodes}),
                "description": (schema or {}).get("description", ""),
                "common": {"queue": "default", "target_kind": "any", "target_value": "", "space": "",
                           "priority": "0", "timeout": "3600", "max_attempts": "3"},
                "errors": {}}

    def submit_page(self) -> str:
        session = self._session()
        ctx = self._submit_context(session, bottle.request.query.getunicode("type") or "")
        return self._render("submit.html", session, **ctx)

    def submit(self) -> Any:
        session = self._session()
        self._check_csrf(session)
        form = {k: bottle.request.forms.getunicode(k) or "" for k in bottle.request.forms.keys()}
        ctx = self._submit_context(session, form.get("type", ""))
        if form.get("type") != ctx["chosen"]:
            ctx["errors"] = {"form": f"Unknown task type {form.get('type', '')!r}."}
            return self._render("submit.html", session, status=422, **ctx)
        common = {k: form.get(k, "").strip() for k in ctx["common"]}
        ctx["common"] = common
        params, errors = forms.read_params(ctx["fields"], form)
        body: dict[str, Any] = {"name": ctx["chosen"], "params": params}
        if common["queue"]:
            body["queue"] = common["queue"]
        kind, value = common["target_kind"], common["target_value"]
        if kind in ("node", "region"):
            if not value:
                errors["target"] = f"give the {kind} to run on"
            body["target"] = {kind: value}
        elif kind == "all":
            body["target"] = {"all": True}
        for key in ("space", "priority", "timeout", "max_attempts"):
            if common[key]:
                try:
                    body[key] = int(common[key])
                except ValueError:
                    errors.setdefault(key, "must be a whole number")
        for name, message in forms.schema_errors(ctx["schema"], params).items():
            errors.setdefault(name, message)
        for name, message in forms.common_errors(body).items():
            errors.setdefault(name, message)
        if not errors:
            answer = self._call(session, "POST", "/tasks", json_body=body)
            if answer.ok:
                task = answer.json()
                flash(bottle.request, bottle.response, "ok", f"Task {task['id']} submitted.")
                bottle.redirect(f"/tasks/{task['id']}", 303)
            name, message = forms.api_error_field(answer.message)
            if answer.status == 403 and "space" in body:
                name = "space"  # the one refusal a submit can meet: not a member of that space
            errors[name] = message
        for f in ctx["fields"]:
            f.error = errors.pop(f.name, None)
        stray = [f"{k}: {v}" for k, v in errors.items() if k not in forms.COMMON and k != "form"]
        if stray:
            errors["form"] = "; ".join([*([errors["form"]] if "form" in errors else []), *stray])
        ctx["errors"] = errors
        return self._render("submit.html", session, status=422, **ctx)

    # ---- nodes and queues --------------------------------------------------------------

    def _nodes_data(self, session: Session) -> dict[str, Any]:
        q = bottle.request.query
        form = {k: (q.getunicode(k) or "").strip() for k in ("state", "region", "queue")}
        query = {k: v for k, v in form.items() if v}
        if query.get("state") not in (None, "online", "lost"):
            query.pop("state")
        page = self._get(session, "/nodes", limit=1000, **query)
        return {"form": form, "page": page}

    def nodes_page(self) -> str:
        session = self._session()
        data = self._nodes_data(session)
        live, _ = self._live(session, "nodes-live", "/nodes/live", data["form"], "_nodes.html", data, every="2s")
        return self._render("nodes.html", session, live=live, **data)

    def nodes_live(self) -> str:
        session = self._session()
        data = self._nodes_data(session)
        live, version = self._live(session, "nodes-live", "/nodes/live", data["form"], "_nodes.html", data,
                                   every="2s")
        return self._no_change() if self._unchanged(version) else str(live)

    def node_action(self, name: str, action: str) -> Any:
        session = self._session()
        self._check_csrf(session)
        if action not in NODE_ACTIONS:
            self._fail(session, 404, f"No node action {action!r}.")
        answer = self._call(session, "POST", f"/nodes/{quote(name, safe='')}/{action}")
        if answer.ok:
            done = {"cordon": "cordoned", "uncordon": "uncordoned", "drain": "draining"}[action]
            flash(bottle.request, bottle.response, "ok", f"Node {name} {done}.")
        elif answer.status in (403, 404):
            self._fail(session, answer.status, answer.message)
        else:
            flash(bottle.request, bottle.response, "error", answer.message)
        bottle.redirect("/nodes", 303)

    def _queues_data(self, session: Session) -> dict[str, Any]:
        return {"page": self._get(session, "/queues", limit=500)}

    def queues_page(self) -> str:
        session = self._session()
        data = self._queues_data(session)
        live, _ = self._live(session, "queues-live", "/queues/live", {}, "_queues.html", data, every="2s")
        return self._render("queues.html", session, live=live, **data)

    def queues_live(self) -> str:
        session = self._session()
        data = self._queues_data(session)
        live, version = self._live(session, "queues-live", "/queues/live", {}, "_queues.html", data, every="2s")
        return self._no_change() if self._unchanged(version) else str(live)

    # ---- registry ----------------------------------------------------------------------

    def registry_page(self, tab: str) -> str:
        session = self._session()
        loaders: dict[str, Callable[[Session, str, int], dict[str, Any]]] = {
            "users": self._users, "groups": self._groups, "spaces": self._spaces, "providers": self._providers}
        if tab not in loaders:
            self._fail(session, 404, f"No registry page {tab!r}.")
        q = bottle.request.query
        name = (q.getunicode("name") or "").strip()
        offset_raw = q.getunicode("offset") or "0"
        offset = int(offset_raw) if offset_raw.isdigit() else 0
        data = loaders[tab](session, name, offset)
        page = data["page"]
        base = {"name": name} if name else {}
        data["prev_url"] = (f"/registry/{tab}?" + urlencode({**base, "offset": max(0, offset - page["limit"])})
                            if offset > 0 else None)
        data["next_url"] = (f"/registry/{tab}?" + urlencode({**base, "offset": offset + page["limit"]})
                            if offset + page["limit"] < page["total"] else None)
        return self._render("registry.html", session, tab=tab, name=name, **data)

    def _users(self, session: Session, name: str, offset: int) -> dict[str, Any]:
        return {"page": self._get(session, "/users", name=name, limit=PAGE, offset=offset)}

    def _groups(self, session: Session, name: str, offset: int) -> dict[str, Any]:
        page = self._get(session, "/groups", name=name, limit=GROUP_CARDS, offset=offset)
        detail = self._cards(session, "groups", page, children=("children", 100),
                             members=("effective_users", 100))
        names = {g["id"]: g["name"] for g in page["items"]}
        names.update({c["id"]: c["name"] for d in detail.values() for c in (d["children"] or {"items": []})["items"]})
        chained = {g for d in detail.values() for member in (d["members"] or {"items": []})["items"]
                   for chain in member["membership"] for g in chain}
        names.update(self._group_names(session, chained - set(names)))
        return {"page": page, "detail": detail, "group_names": names}

    def _group_names(self, session: Session, ids: set[int]) -> dict[int, str]:
        """Names of the groups the chains pass through, off the page: from one page of
        ``GET /groups`` (every group the visitor may see, on most sites), then one
        ``GET /groups/{id}`` for each still missing only when that page was not all of them."""
        if not ids:
            return {}
        listed = self._try(session, "/groups", limit=500) or {"items": [], "total": 0}
        names = {g["id"]: g["name"] for g in listed["items"] if g["id"] in ids}
        complete = listed["total"] <= len(listed["items"])
        for gid in sorted(ids - set(names)):
            found = None if complete else self._try(session, f"/groups/{gid}")
            names[gid] = found["name"] if found else f"#{gid}"  # one the visitor may not see
        return names

    def _spaces(self, session: Session, name: str, offset: int) -> dict[str, Any]:
        page = self._get(session, "/spaces", name=name, limit=CARDS, offset=offset)
        detail = self._cards(session, "spaces", page, supports=("providers", 100), groups=("groups", 100),
                             members=("effective_users", 1))
        for d in detail.values():  # a space's card counts its effective members
            d["members"] = d["members"]["total"] if d["members"] else None
        return {"page": page, "detail": detail}

    def _cards(self, session: Session, kind: str, page: dict[str, Any],
               **parts: tuple[str, int]) -> dict[int, dict[str, Any]]:
        """What each card of a group or space page shows: per item, each of ``parts``
        (name: (its sub-list, how many)) as the API answers it, None where it refuses."""
        return {item["id"]: {part: self._try(session, f"/{kind}/{item['id']}/{sub}", limit=limit)
                             for part, (sub, limit) in parts.items()}
                for item in page["items"]}

    def _providers(self, session: Session, name: str, offset: int) -> dict[str, Any]:
        page = self._get(session, "/providers", name=name, limit=PAGE, offset=offset)
        detail = {p["id"]: self._try(session, f"/providers/{p['id']}/spaces", limit=100) for p in page["items"]}
        return {"page": page, "detail": detail}

    # ---- changes -----------------------------------------------------------------------

    def _feed_head(self, session: Session) -> int:
        """The newest change number. ``GET /changes`` answers 409 for a ``since`` past it, so
        doubling then halving finds it in about 2*log2(n) cheap calls through the same route."""
        def within(since: int) -> bool:
            answer = self._call(session, "GET", "/changes", query={"since": since, "limit": 1})
            if answer.status not in (200, 409):
                self._fail(session, answer.status, answer.message)
            return answer.status == 200

        low, high = 0, 1
        while within(high):
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            if within(mid):
                low = mid
            else:
                high = mid
        return low

    def _changes_data(self, session: Session, since: int, keep: int = HISTORY, pages: int = 10) -> dict[str, Any]:
        """The last ``keep`` visible changes after ``since`` (reading at most ``pages`` pages),
        and where the next poll resumes; ``more`` when the pages ran out before the end."""
        changes: list[dict[str, Any]] = []
        cursor = since
        more = False
        for _ in range(pages):
            answer = self._get(session, "/changes", since=cursor, limit=1000)
            changes.extend(answer["changes"])
            cursor = answer["last_seq"]
            more = len(answer["changes"]) == 1000
            if not more:
                break
        if len(changes) > keep:
            since = changes[-keep - 1]["seq"]
            changes = changes[-keep:]
        return {"changes": list(reversed(changes)), "since": since, "last_seq": cursor, "more": more,
                "history": False, "newer_url": None,
                "earlier_url": f"/changes?since={max(0, since - keep)}" if since > 0 else None}

    def changes_page(self) -> str:
        """Without ``since``: the newest changes, live. With it: the next 100 after it, a page
        of history with links to the pages before and after."""
        session = self._session()
        raw = bottle.request.query.getunicode("since")
        if raw and raw.isdigit():
            since = int(raw)
            answer = self._get(session, "/changes", since=since, limit=HISTORY)
            full = len(answer["changes"]) == HISTORY
            data = {"changes": list(reversed(answer["changes"])), "since": since, "history": True,
                    "earlier_url": f"/changes?since={max(0, since - HISTORY)}" if since > 0 else None,
                    "newer_url": f"/changes?since={answer['last_seq']}" if full else "/changes"}
            table = Markup(self._fragment("_changes.html", session, **data))  # noqa: S704 - autoescaped
            return self._render("changes.html", session, live=table, **data)
        data = self._changes_data(session, 0, pages=1)  # one read holds all of a small feed
        if data["more"]:  # a long one: start near its head
            data = self._changes_data(session, max(0, self._feed_head(session) - HISTORY))
        live, _ = self._live(session, "changes-live", "/changes/live", {"since": data["since"]},
                             "_changes.html", data)
        return self._render("changes.html", session, live=live, **data)

    def changes_live(self) -> str:
        session = self._session()
        raw = bottle.request.query.getunicode("since") or "0"
        data = self._changes_data(session, int(raw) if raw.isdigit() else 0)
        live, version = self._live(session, "changes-live", "/changes/live", {"since": data["since"]},
                                   "_changes.html", data)
        return self._no_change() if self._unchanged(version) else str(live)


def _attempts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per attempt, from the events: each ``assigned`` starts one, the next
    ``lost``, ``queued`` or final state ends it."""
    attempts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in events:
        to = event["to_state"]
        if to == "assigned" and event["from_state"] != "assigned":
            current = {"number": len(attempts) + 1, "assigned_at": event["ts"], "started_at": None,
                       "ended_at": None, "outcome": "assigned", "reason": event["reason"]}
            attempts.append(current)
        elif current is not None and to == "running" and event["from_state"] != "running":
            current["started_at"], current["outcome"] = event["ts"], "running"
        elif current is not None and to in (*TERMINAL, "lost", "queued") and event["from_state"] != to:
            current["ended_at"], current["outcome"], current["reason"] = event["ts"], to, event["reason"]
            current = None
    return attempts


def build_dashboard(api_app: WsgiApp, settings: Settings) -> Dashboard:
    """The dashboard for ``/``, reading and acting through ``api_app`` (the REST Bottle app)."""
    return Dashboard(api_app, settings)


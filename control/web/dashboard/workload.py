"""The dashboard's workload pages: templates (versions, launch), schedules and webhooks.

A mixin of ``Dashboard``: like every page, each handler reads and acts only through the
REST routes with the session's token (``self._get``, ``self._call``), so a user sees the
templates, schedules and webhooks the API lists for them and nothing else, and a button
does exactly what the API lets that user do; a refusal (403, 404) is the page's answer.
A new webhook's secret is shown on the one page that answers its creation and is never
stored (not in the flash cookie, not in the session).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import bottle

from control.web.dashboard import forms
from control.web.dashboard.session import Session, flash

PAGE = 50
WEBHOOK_CARDS = 10  # webhooks a page shows, each with one read of its recent deliveries
DELIVERIES_SHOWN = 5
WEBHOOK_EVENTS = ("task.succeeded", "task.failed", "task.timed_out", "task.cancelled", "node.lost",
                  "schedule.failed")
LAUNCH_COMMON = ("queue", "priority", "timeout", "max_attempts")
SCHEDULE_ACTIONS = {"pause": {"enabled": False}, "resume": {"enabled": True}}


def _offset() -> int:
    raw = bottle.request.query.getunicode("offset") or "0"
    return int(raw) if raw.isdigit() else 0


def _pager(path: str, page: dict[str, Any], offset: int, **base: str) -> dict[str, str | None]:
    """Links to the previous and next pages of a list, keeping its filters."""
    base = {k: v for k, v in base.items() if v}
    limit = page["limit"]
    return {"prev_url": f"{path}?" + urlencode({**base, "offset": max(0, offset - limit)}) if offset > 0 else None,
            "next_url": (f"{path}?" + urlencode({**base, "offset": offset + limit})
                         if offset + limit < page["total"] else None)}


def _owner_label(t: dict[str, Any]) -> str:
    return f"space #{t['space']}" if t["space"] else (f"user #{t['owner']}" if t["owner"] else "root")


class WorkloadPages:
    """Routes ``/templates``, ``/schedules`` and ``/webhooks`` of the dashboard (``install_workload``)."""

    def install_workload(self) -> None:
        r = self.app.route
        r("/templates", "GET", self.templates_page)
        r("/templates/<template_id:int>", "GET", self.template_page)
        r("/templates/<template_id:int>/launch", "POST", self.template_launch)
        r("/schedules", "GET", self.schedules_page)
        r("/schedules/<schedule_id:int>/<action>", "POST", self.schedule_action)
        r("/webhooks", "GET", self.webhooks_page)
        r("/webhooks", "POST", self.webhook_create)
        r("/webhooks/<hook_id:int>/<action>", "POST", self.webhook_action)

    # ---- templates -----------------------------------------------------------------------

    def templates_page(self) -> str:
        session = self._session()
        name = (bottle.request.query.getunicode("name") or "").strip()
        offset = _offset()
        page = self._get(session, "/templates", name=name, limit=PAGE, offset=offset)
        return self._render("templates.html", session, page=page, name=name,
                            owner_label=_owner_label, **_pager("/templates", page, offset, name=name))

    def _template_context(self, session: Session, template_id: int) -> dict[str, Any]:
        """The template, the version asked for (``?version=``), its versions and a blank launch form
        generated from its type's params schema: a field left blank keeps the template's value."""
        template = self._get(session, f"/templates/{template_id}")
        raw = bottle.request.query.getunicode("version") or ""
        shown = template
        if raw.isdigit() and int(raw) != template["version"]:
            shown = self._get(session, f"/templates/{template_id}/versions/{int(raw)}")
        versions = self._get(session, f"/templates/{template_id}/versions",
                             limit=PAGE, offset=max(0, template["version"] - PAGE))
        types = self._try(session, "/task-types") or []
        task_type = template["spec"].get("name")
        schema = next((t["params_schema"] for t in types if t["name"] == task_type), None)
        fields = forms.fields_for(schema)
        for f in fields:  # overrides: nothing is required, nothing is prefilled
            f.required, f.value = False, ""
        return {"tpl": template, "shown": shown, "versions": versions, "schema": schema, "fields": fields,
                "common": dict.fromkeys(LAUNCH_COMMON, ""), "errors": {},
                "owner_label": _owner_label(template)}

    def template_page(self, template_id: int) -> str:
        session = self._session()
        ctx = self._template_context(session, template_id)
        return self._render("template.html", session, **ctx)

    def template_launch(self, template_id: int) -> Any:
        """``POST /templates/{id}/launch`` with the overrides filled in; the API checks the grant,
        the space and the merged params against the type's schema, as for any submission."""
        session = self._session()
        self._check_csrf(session)
        form = {k: bottle.request.forms.getunicode(k) or "" for k in bottle.request.forms.keys()}
        ctx = self._template_context(session, template_id)
        params, errors = forms.read_params(ctx["fields"], form)
        common = {k: form.get(k, "").strip() for k in LAUNCH_COMMON}
        ctx["common"] = common
        body: dict[str, Any] = {"params": params} if params else {}
        if common["queue"]:
            body["queue"] = common["queue"]
        for key in ("priority", "timeout", "max_attempts"):
            if common[key]:
                try:
                    body[key] = int(common[key])
                except ValueError:
                    errors.setdefault(key, "must be a whole number")
        if not errors:
            answer = self._call(session, "POST", f"/templates/{template_id}/launch",
                                json_body=body)
            if answer.ok:
                task = answer.json()
                flash(bottle.request, bottle.response, "ok",
                      f"Task {task['id']} launched from {ctx['tpl']['name']} v{task['template_version']}.")
                bottle.redirect(f"/tasks/{task['id']}", 303)
            if answer.status in (403, 404):
                self._fail(session, answer.status, answer.message)
            name, message = forms.api_error_field(answer.message)
            errors[name if name in LAUNCH_COMMON else "form"] = message
        for f in ctx["fields"]:
            f.error = errors.pop(f.name, None)
        stray = [f"{k}: {v}" for k, v in errors.items() if k not in LAUNCH_COMMON and k != "form"]
        if stray:
            errors["form"] = "; ".join([*([errors["form"]] if "form" in errors else []), *stray])
        ctx["errors"] = errors
        return self._render("template.html", session, status=422, **ctx)

    # ---- schedules -----------------------------------------------------------------------

    def schedules_page(self) -> str:
        session = self._session()
        offset = _offset()
        page = self._get(session, "/schedules", limit=PAGE, offset=offset)
        # the templates' names: one page of the templates the visitor sees holds them on most sites
        listed = self._try(session, "/templates", limit=500) or {"items": []}
        names = {t["id"]: t["name"] for t in listed["items"]}
        return self._render("schedules.html", session, page=page,
                            template_names=names, **_pager("/schedules", page, offset))

    def schedule_action(self, schedule_id: int, action: str) -> Any:
        """Pause or resume (``PATCH enabled``); the API decides who may (owner, template admin, root)."""
        session = self._session()
        self._check_csrf(session)
        if action not in SCHEDULE_ACTIONS:
            self._fail(session, 404, f"No schedule action {action!r}.")
        answer = self._call(session, "PATCH", f"/schedules/{schedule_id}",
                            json_body=SCHEDULE_ACTIONS[action])
        if answer.status in (403, 404):
            self._fail(session, answer.status, answer.message)
        done = {"pause": "paused", "resume": "resumed"}[action]
        flash(bottle.request, bottle.response, *(("ok", f"Schedule {schedule_id} {done}.") if answer.ok
                                                 else ("error", answer.message)))
        bottle.redirect("/schedules", 303)

    # ---- webhooks ------------------------------------------------------------------------

    def _webhooks_context(self, session: Session) -> dict[str, Any]:
        offset = _offset()
        page = self._get(session, "/webhooks", limit=WEBHOOK_CARDS, offset=offset)
        recent = {h["id"]: self._try(session, f"/webhooks/{h['id']}/deliveries",
                                     limit=DELIVERIES_SHOWN) for h in page["items"]}
        spaces = (self._try(session, "/spaces", limit=500) or {"items": []})["items"]
        templates = (self._try(session, "/templates", limit=500) or {"items": []})["items"]
        scopes = [("own", "my own tasks")]
        if session.is_root:
            scopes = [("all", "every task"), *scopes]
        scopes += [(f"space:{s['id']}", f"space {s['name']}") for s in spaces]
        scopes += [(f"template:{t['id']}", f"template {t['name']}") for t in templates]
        return {"page": page, "recent": recent, "scopes": scopes, "events": WEBHOOK_EVENTS,
                "form": {"url": "", "events": [], "scope": scopes[0][0], "description": ""}, "errors": {},
                "created": None, **_pager("/webhooks", page, offset)}

    def webhooks_page(self) -> str:
        session = self._session()
        return self._render("webhooks.html", session, **self._webhooks_context(session))

    def webhook_create(self) -> str:
        """``POST /webhooks``; the answer is this page, showing the secret this once (201), or the
        form again with the API's message (422 and the like)."""
        session = self._session()
        self._check_csrf(session)
        forms_in = bottle.request.forms
        form = {"url": (forms_in.getunicode("url") or "").strip(),
                "events": [e for e in forms_in.getall("events") if e in WEBHOOK_EVENTS],
                "scope": forms_in.getunicode("scope") or "own",
                "description": (forms_in.getunicode("description") or "").strip()}
        body: dict[str, Any] = {"url": form["url"], "events": form["events"], "description": form["description"]}
        kind, _, ident = form["scope"].partition(":")
        body["scope"] = kind
        if ident:
            body["scope_id"] = int(ident) if ident.isdigit() else 0
        answer = self._call(session, "POST", "/webhooks", json_body=body)
        ctx = self._webhooks_context(session)
        if answer.ok:
            ctx["created"] = answer.json()
            return self._render("webhooks.html", session, status=201, **ctx)
        if answer.status == 403 and kind != "space":
            self._fail(session, 403, answer.message)
        ctx["form"] = form
        ctx["errors"] = {"form": answer.message}
        return self._render("webhooks.html", session, status=answer.status, **ctx)

    def webhook_action(self, hook_id: int, action: str) -> Any:
        """Queue a test delivery, or delete the webhook; another user's webhook is the API's 403."""
        session = self._session()
        self._check_csrf(session)
        if action == "test":
            answer = self._call(session, "POST", f"/webhooks/{hook_id}/test")
            done = f"Test delivery queued for webhook {hook_id}."
        elif action == "delete":
            answer = self._call(session, "DELETE", f"/webhooks/{hook_id}")
            done = f"Webhook {hook_id} deleted."
        else:
            self._fail(session, 404, f"No webhook action {action!r}.")
        if answer.status in (403, 404):
            self._fail(session, answer.status, answer.message)
        flash(bottle.request, bottle.response, *(("ok", done) if answer.ok else ("error", answer.message)))
        bottle.redirect("/webhooks", 303)


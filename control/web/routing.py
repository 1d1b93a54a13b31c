"""One table of routes drives both Bottle and the OpenAPI document.

A resource module declares each route once with ``@route(...)``: method, path in
OpenAPI form (``/users/{id}``), request model, response models, auth mode and query
parameters. ``install`` mounts them on Bottle behind one wrapper that borrows a
database connection, authenticates, parses and validates the body, runs the handler
in a transaction for writes, and renders JSON. ``control.web.openapi`` reads the same
table, so the document cannot drift from the routes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bottle
import peewee
import pydantic

from control.core import actor as actors
from control.core.config import Settings
from control.core.db import connection, write_transaction
from control.core.errors import ApiError, bad_request, invalid
from control.registry.identity import Principal, authenticate
from control.web import metrics

API_PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass
class Query:
    """A query parameter: its type (int, str, float, bool), default and bounds."""

    type: type = str
    default: Any = None
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None


@dataclass
class RouteSpec:
    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    tag: str
    body: type[pydantic.BaseModel] | None = None
    form: type[pydantic.BaseModel] | None = None
    responses: dict[int, Any] = field(default_factory=dict)
    auth: str = "bearer"  # "none" | "bearer" | "node"
    query: dict[str, Query] = field(default_factory=dict)
    str_params: tuple[str, ...] = ()

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path

    def bottle_path(self) -> str:
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            return f"<{name}>" if name in self.str_params else f"<{name}:int>"
        return _PARAM.sub(repl, self.full_path)


ROUTES: list[RouteSpec] = []


def route(method: str, path: str, *, summary: str, tag: str,
          body: type[pydantic.BaseModel] | None = None,
          form: type[pydantic.BaseModel] | None = None,
          responses: dict[int, Any] | None = None, auth: str = "bearer",
          query: dict[str, Query] | None = None,
          str_params: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a route. ``responses`` maps status to a pydantic model, ``None`` (no body) or a
    JSON-schema dict. Path parameters are integers unless named in ``str_params``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append(RouteSpec(method.upper(), path, fn, summary, tag, body, form,
                                responses or {200: None}, auth, query or {}, str_params))
        return fn

    return deco


@dataclass
class Reply:
    """A status other than 200, or headers. A callable ``payload`` is called after the
    write transaction commits: reads that only shape the answer then do not hold the
    database's write lock (on SQLite, every other writer waits for it)."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    settings: Settings
    principal: Principal | None
    body: Any
    raw_body: bytes
    query: dict[str, Any]
    method: str
    path_qs: str
    headers: dict[str, str]
    remote_addr: str


def _read_body() -> bytes:
    length = bottle.request.content_length
    if length > MAX_BODY:
        raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
    raw = bottle.request.body.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
    return raw


def _format_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _parse_body(spec: RouteSpec, raw: bytes) -> Any:
    if spec.form is not None:
        ctype = (bottle.request.content_type or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = json.loads(raw or b"{}")
            except ValueError:
                raise bad_request("malformed JSON body") from None
        else:
            data = {k: bottle.request.forms.getunicode(k) for k in bottle.request.forms.keys()}
        model = spec.form
    elif spec.body is not None:
        if not raw.strip():
            data = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise bad_request("malformed JSON body") from None
        model = spec.body
    else:
        return None
    if not isinstance(data, dict):
        raise invalid("body: must be a JSON object")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid(_format_validation(exc)) from None


def _parse_query(spec: RouteSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    q = bottle.request.query
    for name, param in spec.query.items():
        raw = q.getunicode(name)
        if raw is None or raw == "":
            out[name] = param.default
            continue
        try:
            if param.type is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value: Any = raw.lower() in ("true", "1")
            else:
                value = param.type(raw)
        except ValueError:
            raise invalid(f"{name}: must be of type {param.type.__name__}") from None
        if param.minimum is not None and value < param.minimum:
            raise invalid(f"{name}: must be at least {param.minimum}")
        if param.maximum is not None and value > param.maximum:
            raise invalid(f"{name}: must be at most {param.maximum}")
        if param.enum is not None and value not in param.enum:
            raise invalid(f"{name}: must be one of {', '.join(param.enum)}")
        out[name] = value
    return out


def render(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [render(v) for v in value]
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    return value


def _respond(status: int, payload: Any, headers: dict[str, str] | None = None) -> str:
    resp = bottle.response
    resp.status = status
    for k, v in (headers or {}).items():
        resp.set_header(k, v)
    if payload is None and status == 204:
        return ""
    resp.content_type = "application/json"
    return json.dumps(render(payload), separators=(",", ":"))


def _context(spec: RouteSpec, settings: Settings, principal: Principal | None, raw: bytes,
             path_qs: str, headers: dict[str, str]) -> Context:
    req = bottle.request
    if principal is not None:
        req.environ["zonefarm.principal"] = principal.describe()
        actors.assume(principal.describe())
    return Context(settings, principal, _parse_body(spec, raw), raw, _parse_query(spec), req.method,
                   path_qs, headers, req.remote_addr or "")


def _node_call(spec: RouteSpec, settings: Settings, params: dict[str, Any], raw: bytes, path_qs: str,
               headers: dict[str, str]) -> Any:
    """Authenticate a signed node request and run its handler, inside the caller's transaction.

    The handler runs in a savepoint and its refusal is returned, not raised, so the caller
    commits the nonce anyway: a refused request replayed later is still a replay.
    """
    from control.core.db import database
    from control.web.nodeauth import authenticate_node

    principal = authenticate_node(settings, headers, bottle.request.method, path_qs, raw)
    try:
        with database.atomic():
            return spec.handler(_context(spec, settings, principal, raw, path_qs, headers), **params)
    except (ApiError, peewee.IntegrityError) as exc:
        return exc


def _make_callback(spec: RouteSpec, settings: Settings) -> Callable[..., str]:
    writes = spec.method in ("POST", "PUT", "PATCH", "DELETE")

    def callback(**params: Any) -> str:
        """Handle one request as its caller (the audit actor) and time it for ``GET /metrics``."""
        started = time.perf_counter()
        with actors.acting("anonymous"):
            out = handle(**params)
        status = bottle.response.status_code
        metrics.observe_request(spec.full_path, spec.method, status, time.perf_counter() - started)
        if spec.auth == "node" and status < 400:
            try:
                signed_at = float(bottle.request.get_header("X-Zonefarm-Timestamp") or "")
            except ValueError:
                pass
            else:
                metrics.observe_callback(spec.full_path, signed_at)
        return out

    def handle(**params: Any) -> str:
        req = bottle.request
        try:
            raw = _read_body() if (spec.body or spec.form or spec.auth == "node") else b""
            qs = req.environ.get("QUERY_STRING", "")
            path_qs = req.path + (f"?{qs}" if qs else "")
            headers = {k: v for k, v in req.headers.items()}
            with connection():
                if spec.auth == "node":
                    # A node request always writes (its nonce), so it queues for the write lock
                    # once and records the nonce and the handler's writes in one commit.
                    with write_transaction():
                        result = _node_call(spec, settings, params, raw, path_qs, headers)
                    if isinstance(result, Exception):
                        raise result
                else:
                    principal = None
                    if spec.auth == "bearer":
                        principal = authenticate(req.get_header("Authorization"), settings.root_secret)
                    ctx = _context(spec, settings, principal, raw, path_qs, headers)
                    if writes:
                        with write_transaction():
                            result = spec.handler(ctx, **params)
                    else:
                        result = spec.handler(ctx, **params)
                if isinstance(result, Reply) and callable(result.payload):
                    result = Reply(result.status, result.payload(), result.headers)
            if isinstance(result, Reply):
                return _respond(result.status, result.payload, result.headers)
            if result is None:
                return _respond(204, None)
            return _respond(200, result)
        except ApiError as exc:
            return _respond(exc.status, {"error": {"code": exc.code, "message": exc.message}},
                            exc.headers)
        except peewee.IntegrityError:
            return _respond(409, {"error": {"code": "conflict",
                                            "message": "conflicts with an existing record"}})

    callback.__name__ = spec.handler.__name__
    return callback


def install(app: bottle.Bottle, settings: Settings) -> None:
    for spec in ROUTES:
        app.route(spec.bottle_path(), spec.method, _make_callback(spec, settings))


def paginated_query() -> dict[str, Query]:
    return {
        "limit": Query(int, 50, "Page size", 1, 500),
        "offset": Query(int, 0, "Rows to skip", 0, None),
        "name": Query(str, None, "Case-insensitive substring of the name"),
    }


def paginate(query: peewee.ModelSelect, ctx: Context, name_field: peewee.Field | None,
             to_out: Callable[[Any], Any]) -> dict[str, Any]:
    """Apply ``?name=``, ``?limit=`` and ``?offset=``; items are ordered by id."""
    if name_field is not None and ctx.query.get("name"):
        query = query.where(name_field.contains(ctx.query["name"]))
    total = query.count()
    rows = query.order_by(query.model.id).limit(ctx.query["limit"]).offset(ctx.query["offset"])
    return {"items": [to_out(r) for r in rows], "total": total,
            "limit": ctx.query["limit"], "offset": ctx.query["offset"]}

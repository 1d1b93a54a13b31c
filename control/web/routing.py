"""One table of routes drives both Bottle and the OpenAPI document.

A resource module declares each route once with ``@route(...)``: method, path in
OpenAPI form (``/users/{id}``), request model, response models, auth mode and query
parameters. ``install`` mounts them on Bottle behind one wrapper that borrows a
database connection, authenticates, parses and validates the body, runs the handler
in a transaction for writes, and renders JSON. ``control.web.openapi`` reads the same
table, so the document cannot drift from the routes.
"""

from __future__ import annotations

import decimal
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bottle
import peewee
import pydantic

from control.core import actor as actors
from control.core.config import Settings
from control.core.db import connection, write_transaction
from control.core.errors import ApiError, bad_request, forbidden, invalid, not_found
from control.core.schemas import MAX_ID
from control.registry.identity import Principal, authenticate
from control.web import metrics

API_PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024
# Ids are 64-bit signed integers in SQLite and PostgreSQL alike (MAX_ID): a larger number in a
# path can name nothing (404), and one in a query or body is refused before it reaches the driver.
MIN_INT = -(2**63)
# JSON deeper than this is refused (400) before it is parsed: nothing the API takes nests
# half as deep, and the parser would otherwise recurse until Python's stack limit (a 500).
MAX_JSON_DEPTH = 64
_PARAM = re.compile(r"\{(\w+)\}")
_INT = re.compile(r"-?[0-9]{1,20}")
_FLOAT = re.compile(r"-?(?:[0-9]{1,20}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Query:
    """A query parameter: its type (int, str, float, bool), default and bounds.

    An integer without bounds gets the 64-bit range, so no query can overflow the database.
    """

    type: type = str
    default: Any = None
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type is int:
            self.minimum = MIN_INT if self.minimum is None else self.minimum
            self.maximum = MAX_ID if self.maximum is None else self.maximum


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
    read_only_ok: bool = False  # a write a read-only token may still make (revoking itself)
    path_params: tuple[str, ...] = ()  # string params that may hold "/" (the last segment: a file's name)

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path

    def bottle_path(self) -> str:
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in self.path_params:
                return f"<{name}:path>"
            return f"<{name}>" if name in self.str_params else f"<{name}:int>"
        return _PARAM.sub(repl, self.full_path)

    def int_params(self) -> list[str]:
        return [n for n in _PARAM.findall(self.path) if n not in self.str_params]

    def matches(self, path: str) -> bool:
        """Whether Bottle would route the concrete ``path`` here (whatever the method)."""
        parts = _PARAM.split(self.full_path)  # literal, name, literal, name, ..., literal
        rx = "".join(re.escape(p) if i % 2 == 0 else (".+" if p in self.path_params else "[^/]+"
                                                      if p in self.str_params else "-?[0-9]+")
                     for i, p in enumerate(parts))
        return re.fullmatch(rx, path) is not None


ROUTES: list[RouteSpec] = []
BINARY = "binary"  # a ``responses`` value: raw bytes (application/octet-stream), not JSON


def route(method: str, path: str, *, summary: str, tag: str,
          body: type[pydantic.BaseModel] | None = None,
          form: type[pydantic.BaseModel] | None = None,
          responses: dict[int, Any] | None = None, auth: str = "bearer",
          query: dict[str, Query] | None = None,
          str_params: tuple[str, ...] = (),
          path_params: tuple[str, ...] = (),
          read_only_ok: bool = False,
          name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a route. ``responses`` maps status to a pydantic model, ``None`` (no body) or a
    JSON-schema dict. Path parameters are integers unless named in ``str_params``; those also
    named in ``path_params`` may hold "/" (a file's name in a task's directory).
    ``read_only_ok`` lets a read-only token make this write (only revoking itself needs it).
    ``name`` is the operation id where one function, made per kind of resource (groups and
    spaces), serves several routes; by default it is the function's own name.

    A handler answers with a value, a ``Reply`` or ``None`` (204), or raises an ``ApiError``.
    It may also *return* an ``ApiError``: its transaction then commits before the error is
    sent, which is how a refusal keeps a record of itself (a failed login is counted)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name is not None:
            fn.__name__ = fn.__qualname__ = name
        ROUTES.append(RouteSpec(method.upper(), path, fn, summary, tag, body, form,
                                responses or {200: None}, auth, query or {}, (*str_params, *path_params),
                                read_only_ok, path_params))
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
class Stream:
    """A body that is not JSON, sent as it is produced (a file streamed from a provider).

    ``body`` is iterated after the request's database connection is closed: it must need
    none. Bottle reads its first chunk before it sends the headers."""

    status: int
    headers: dict[str, str]
    body: Iterator[bytes]


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


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"[\[{][\]}]")


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (up to ``MAX_JSON_DEPTH + 1``),
    without parsing it.

    Most bodies have fewer brackets than the limit and cost two ``count`` calls. Others keep
    only their brackets (strings removed: theirs do not count), then lose their innermost
    pairs once per level, each pass a regular-expression substitution. A malformed text gets
    some number here and its parse error later.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return MAX_JSON_DEPTH
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    for depth in range(MAX_JSON_DEPTH + 1):
        inner = _INNERMOST.sub(b"", brackets)
        if inner == brackets:  # empty, or unbalanced: the parser will say so
            return depth
        brackets = inner
    return MAX_JSON_DEPTH + 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(text: str) -> int | float:
    """A JSON number with a fraction or exponent. One that is whole (``22.0``, ``1e3``) is an
    integer, as JSON Schema counts them, so an integer field takes it; an infinite one
    (``1e999``) is refused."""
    exact = decimal.Decimal(text)
    if exact.adjusted() < 19 and exact == exact.to_integral_value():  # below 10**19: no huge ints
        return int(exact)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """Strict JSON: nesting capped at ``MAX_JSON_DEPTH``, no NaN or Infinity (Python's parser
    takes both, and no database column or schema does); any refusal is a 400."""
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise bad_request(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_number)
    except (ValueError, UnicodeDecodeError, RecursionError, decimal.InvalidOperation):
        raise bad_request("malformed JSON body") from None


def _parse_body(spec: RouteSpec, raw: bytes) -> Any:
    if spec.form is not None:
        ctype = (bottle.request.content_type or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            data = parse_json(raw or b"{}")
        else:
            data = {k: bottle.request.forms.getunicode(k) for k in bottle.request.forms.keys()}
        model = spec.form
    elif spec.body is not None:
        data = parse_json(raw) if raw else {}  # no body is {}; blanks are not JSON (400)
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
        if raw is None or (raw == "" and param.type is str and param.enum is None):
            out[name] = param.default
            continue
        value: Any = raw
        if param.type is bool:
            if raw.lower() not in ("true", "false"):
                raise invalid(f"{name}: must be true or false")
            value = raw.lower() == "true"
        elif param.type is int:
            # Python's int() also takes " 7", "1_000" and other scripts' digits: the document does not
            if not _INT.fullmatch(raw):
                raise invalid(f"{name}: must be of type int")
            value = int(raw)
        elif param.type is float:
            value = float(raw) if _FLOAT.fullmatch(raw) else math.nan
            if not math.isfinite(value):
                raise invalid(f"{name}: must be a finite number")
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


def _check_ids(spec: RouteSpec, params: dict[str, Any]) -> None:
    """An id outside 1..2^63-1 names no row (and would overflow the driver): 404."""
    for name in spec.int_params():
        if not 1 <= params[name] <= MAX_ID:
            raise not_found(name, params[name])


def _context(spec: RouteSpec, settings: Settings, principal: Principal | None, raw: bytes,
             path_qs: str, headers: dict[str, str]) -> Context:
    req = bottle.request
    if principal is not None:
        req.environ["zonefarm.principal"] = principal.describe()
        actors.assume(principal.describe())
    # The TCP peer, not Bottle's remote_addr: that one believes any X-Forwarded-For header,
    # and login throttling per address must not be escapable by sending one.
    return Context(settings, principal, _parse_body(spec, raw), raw, _parse_query(spec), req.method,
                   path_qs, headers, req.environ.get("REMOTE_ADDR") or "")


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
        _check_ids(spec, params)
        with database.atomic():
            return spec.handler(_context(spec, settings, principal, raw, path_qs, headers), **params)
    except (ApiError, peewee.IntegrityError) as exc:
        return exc


def _make_callback(spec: RouteSpec, settings: Settings) -> Callable[..., str]:
    writes = spec.method in WRITE_METHODS

    def callback(**params: Any) -> str | Iterator[bytes]:
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

    def handle(**params: Any) -> str | Iterator[bytes]:
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
                        if writes and principal.read_only and not spec.read_only_ok:
                            raise forbidden("this token is read-only (scope=read)")
                    _check_ids(spec, params)
                    ctx = _context(spec, settings, principal, raw, path_qs, headers)
                    if writes:
                        with write_transaction():
                            result = spec.handler(ctx, **params)
                    else:
                        result = spec.handler(ctx, **params)
                    if isinstance(result, ApiError):
                        raise result  # returned, not raised: its writes are committed
                if isinstance(result, Reply) and callable(result.payload):
                    result = Reply(result.status, result.payload(), result.headers)
            if isinstance(result, Stream):
                bottle.response.status = result.status
                for k, v in result.headers.items():
                    bottle.response.set_header(k, v)
                return result.body
            if isinstance(result, Reply):
                return _respond(result.status, result.payload, result.headers)
            if result is None:
                return _respond(204, None)
            return _respond(200, result)
        except ApiError as exc:
            error: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.details:
                error["details"] = exc.details
            return _respond(exc.status, {"error": error}, exc.headers)
        except peewee.IntegrityError:
            return _respond(409, {"error": {"code": "conflict",
                                            "message": "conflicts with an existing record"}})

    callback.__name__ = spec.handler.__name__
    return callback


def _method_not_allowed(methods: set[str]) -> Callable[..., str]:
    allow = ", ".join(sorted(methods))

    def method_not_allowed(**params: Any) -> str:
        return _respond(405, {"error": {"code": "method_not_allowed", "message":
                                        f"method {bottle.request.method} not allowed on "
                                        f"{bottle.request.path}; allowed: {allow}"}},
                        {"Allow": allow})

    return method_not_allowed


def install(app: bottle.Bottle, settings: Settings) -> None:
    """Mount every route, then answer other methods on each path with 405 and its own ``Allow``.

    Bottle would list the methods of every rule matching the URL: ``OPTIONS /nodes/register``
    named the GET and DELETE of ``/nodes/{name}``, and ``GET /nodes/register`` reached
    ``GET /nodes/{name}`` for a node called "register". The document says ``/nodes/register``
    is POST only, so that is what the server says too.
    """
    paths: dict[str, list[RouteSpec]] = {}
    for spec in ROUTES:
        app.route(spec.bottle_path(), spec.method, _make_callback(spec, settings))
        paths.setdefault(spec.full_path, []).append(spec)
    for full_path, specs in paths.items():
        methods = {s.method for s in specs}
        refuse = _method_not_allowed(methods)
        app.route(specs[0].bottle_path(), "ANY", refuse)
        if _PARAM.search(full_path) is None:
            shadowing = {s.method for s in ROUTES if s.method not in methods and s.matches(full_path)}
            for method in sorted(shadowing):
                app.route(specs[0].bottle_path(), method, refuse)


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

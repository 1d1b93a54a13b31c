"""The OpenAPI document describes exactly the routes the server mounts, nothing more or less.

``contract_diff`` derives, from the route table alone (``control.web.routing.ROUTES``), what
each operation must say: method, path and query parameters, request body schema, response
statuses and schemas. It then compares that with a document. Routes other engineers add
are covered without touching this file. The mutation tests build the document from a
doctored route table and check that the diff notices.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pydantic
import pytest
from openapi_spec_validator import validate

import control.web.openapi as openapi_mod
import control.web.routes  # noqa: F401  (every resource module registers its routes)
from control.core.config import Settings
from control.core.schemas import MAX_ID
from control.web.app import build_app
from control.web.routing import BINARY, ROUTES, Query, RouteSpec
from tests.support.client import Api

_TYPES = {int: "integer", str: "string", float: "number", bool: "boolean"}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _inline(schema: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """Replace every local ``$ref`` by its target so two schemas compare by content."""
    if depth > 40:
        raise AssertionError("schema nests too deep (a $ref cycle?)")
    if isinstance(schema, dict):
        if "$ref" in schema:
            ref = schema["$ref"]
            prefix = "#/components/schemas/" if ref.startswith("#/components/schemas/") else "#/$defs/"
            name = ref[len(prefix):]
            if name not in components:
                raise AssertionError(f"dangling $ref {ref}")
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return {**_inline(components[name], components, depth + 1), **_inline(rest, components, depth)}
        out = {k: _inline(v, components, depth) for k, v in schema.items() if k != "$defs"}
        if isinstance(schema.get("discriminator"), dict) and "mapping" in schema["discriminator"]:
            # mapping values are references as strings: compare the names they point at
            out["discriminator"] = {**schema["discriminator"], "mapping": {
                k: v.rsplit("/", 1)[-1] for k, v in schema["discriminator"]["mapping"].items()}}
        return out
    if isinstance(schema, list):
        return [_inline(v, components, depth) for v in schema]
    return schema


def _model_schema(model: Any, mode: str, components: dict[str, Any]) -> Any:
    """The schema a route's model stands for, computed from the model, not from the document."""
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        schema = model.model_json_schema(mode=mode)  # refs are #/$defs/...
        return _inline(schema, {**schema.get("$defs", {})})
    return _inline(model, components)  # a hand-written JSON schema may point at components


def _expected_parameters(spec: RouteSpec) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for piece in spec.path.split("{")[1:]:
        name = piece.split("}")[0]
        out[(name, "path")] = ({"required": True, "type": "string"} if name in spec.str_params else
                               {"required": True, "type": "integer", "minimum": 1, "maximum": MAX_ID})
    for name, q in spec.query.items():
        assert isinstance(q, Query)
        want: dict[str, Any] = {"required": False, "type": _TYPES[q.type]}
        for key, value in (("default", q.default), ("minimum", q.minimum), ("maximum", q.maximum)):
            if value is not None:
                want[key] = value
        if q.enum:
            want["enum"] = list(q.enum)
        out[(name, "query")] = want
    return out


def _documented_parameters(op: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for p in op.get("parameters", []):
        got = {"required": p.get("required", False), **p.get("schema", {})}
        out[(p["name"], p["in"])] = got
    return out


def contract_diff(doc: dict[str, Any], routes: list[RouteSpec]) -> list[str]:
    """Every way ``doc`` disagrees with ``routes``; empty when it describes them exactly."""
    problems: list[str] = []
    components = doc.get("components", {}).get("schemas", {})
    expected = {(r.full_path, r.method.lower()): r for r in routes}
    dupes = [k for k in expected if sum(1 for r in routes if (r.full_path, r.method.lower()) == k) > 1]
    problems += [f"route {m.upper()} {p} declared twice" for p, m in dupes]
    documented = {(path, method) for path, item in doc.get("paths", {}).items()
                  for method in item if method in METHODS}
    for path, method in sorted(documented - set(expected)):
        problems.append(f"{method.upper()} {path} is documented but not a route")
    for path, method in sorted(set(expected) - documented):
        problems.append(f"{method.upper()} {path} is a route but missing from the document")

    for key in sorted(set(expected) & documented):
        spec, op = expected[key], doc["paths"][key[0]][key[1]]
        where = f"{key[1].upper()} {key[0]}"
        want_params, got_params = _expected_parameters(spec), _documented_parameters(op)
        for name_in in sorted(set(want_params) | set(got_params)):
            want, got = want_params.get(name_in), got_params.get(name_in)
            if want is None:
                problems.append(f"{where}: extra parameter {name_in}")
            elif got is None:
                problems.append(f"{where}: missing parameter {name_in}")
            else:
                got = {k: v for k, v in got.items() if k in ("required", "type", "default", "minimum",
                                                             "maximum", "enum")}
                if got != want:
                    problems.append(f"{where}: parameter {name_in} is {got}, route says {want}")

        body_model = spec.form or spec.body
        request = op.get("requestBody")
        if body_model is None and request is not None:
            problems.append(f"{where}: documents a request body the route does not take")
        elif body_model is not None:
            if request is None:
                problems.append(f"{where}: request body missing")
            else:
                want_types = {"application/json"} | ({"application/x-www-form-urlencoded"} if spec.form else set())
                if set(request.get("content", {})) != want_types:
                    problems.append(f"{where}: request content types {sorted(request.get('content', {}))}, "
                                    f"route takes {sorted(want_types)}")
                want_schema = _model_schema(body_model, "validation", components)
                for ctype, content in request.get("content", {}).items():
                    if _inline(content.get("schema"), components) != want_schema:
                        problems.append(f"{where}: request schema ({ctype}) differs from {body_model.__name__}")

        responses = op.get("responses", {})
        want_status = {str(s) for s in spec.responses}
        got_status = set(responses) - {"default"}
        if want_status != got_status:
            problems.append(f"{where}: responses {sorted(got_status)}, route declares {sorted(want_status)}")
        for status, model in spec.responses.items():
            declared = responses.get(str(status))
            if declared is None:
                continue
            content = declared.get("content")
            if model is None:
                if content:
                    problems.append(f"{where}: {status} documents a body, route sends none")
                continue
            if model == BINARY:
                if list(content or {}) != ["application/octet-stream"]:
                    problems.append(f"{where}: {status} documents {sorted(content or {})}, route sends bytes")
                continue
            if not content or "application/json" not in content:
                problems.append(f"{where}: {status} documents no JSON body")
                continue
            if _inline(content["application/json"]["schema"], components) != \
                    _model_schema(model, "serialization", components):
                name = getattr(model, "__name__", "schema")
                problems.append(f"{where}: {status} response schema differs from {name}")
        error = responses.get("default", {}).get("content", {}).get("application/json", {}).get("schema")
        if error is None or _inline(error, components) != openapi_mod.ERROR_SCHEMA:
            problems.append(f"{where}: default response is not the JSON error schema")

        want_security = {"bearer": [{"bearer": []}], "node": [{"nodeSignature": []}], "none": []}[spec.auth]
        if op.get("security") != want_security:
            problems.append(f"{where}: security {op.get('security')}, route auth is {spec.auth!r}")

    op_ids = [op.get("operationId") for item in doc.get("paths", {}).values()
              for m, op in item.items() if m in METHODS]
    problems += [f"operationId {i!r} used twice" for i in sorted({i for i in op_ids if op_ids.count(i) > 1})]
    return problems


def _doc_from(monkeypatch: pytest.MonkeyPatch, routes: list[RouteSpec]) -> dict[str, Any]:
    monkeypatch.setattr(openapi_mod, "ROUTES", routes)
    return openapi_mod.build_document()


def _pick(predicate: Any) -> int:
    for i, spec in enumerate(ROUTES):
        if predicate(spec):
            return i
    raise AssertionError("no route in the table fits this mutation")


def test_route_table_is_not_empty() -> None:
    # the registry's own routes, whichever other resources exist
    paths = {(r.method, r.path) for r in ROUTES}
    assert {("GET", "/healthz"), ("GET", "/openapi.json"), ("POST", "/auth/token"),
            ("GET", "/users"), ("GET", "/users/{id}")} <= paths


def test_served_document_describes_every_route_exactly(api: Api) -> None:
    resp = api.get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    doc = resp.json()
    assert doc == json.loads(json.dumps(openapi_mod.build_document()))
    assert contract_diff(doc, ROUTES) == []


def test_document_is_valid_openapi_3() -> None:
    doc = json.loads(json.dumps(openapi_mod.build_document()))
    assert doc["openapi"].startswith("3.")
    validate(doc)  # raises with the offending pointer


def test_bottle_mounts_exactly_the_route_table(tmp_path: Any) -> None:
    """Nothing reaches the server except through the table the document is built from."""
    settings = Settings(database=f"sqlite:///{tmp_path / 'z.db'}", root_secret="r" * 16, nodes_secret="n" * 16)
    bottle_app = build_app(settings, init_db=False).app.api  # the REST half; the dashboard is the other
    handlers = [r for r in bottle_app.routes if r.callback.__name__ != "method_not_allowed"]
    mounted = sorted((r.method, r.rule) for r in handlers)
    assert mounted == sorted((s.method, s.bottle_path()) for s in ROUTES)
    # the rest only refuse: each path's other methods, and methods a literal path shares with a
    # template that would match it (GET /nodes/register is not GET /nodes/{name})
    refusers = {(r.method, r.rule) for r in bottle_app.routes if r.callback.__name__ == "method_not_allowed"}
    assert {m for m, _ in refusers} - {"ANY"} <= {"GET", "POST", "PUT", "PATCH", "DELETE"}
    assert {rule for _, rule in refusers} == {s.bottle_path() for s in ROUTES}


def test_every_route_answers_on_its_path(api: Api) -> None:
    """Unauthenticated calls to each documented operation reach its route (no 404 route miss, no 405)."""
    for spec in ROUTES:
        path = spec.path
        for piece in spec.path.split("{")[1:]:
            name = piece.split("}")[0]
            path = path.replace("{" + name + "}", "x1" if name in spec.str_params else "1")
        resp = api.request(spec.method, path, timeout=10, check=False,
                           params={"timeout": 0} if "timeout" in spec.query else None)
        assert resp.status_code != 405, f"{spec.method} {spec.path}: {resp.text}"
        assert not (resp.status_code == 404 and "no route" in resp.text), f"{spec.method} {spec.path}"
        assert resp.headers.get("Content-Type", "").startswith("application/json") or resp.status_code == 204


# -- the diff is not blind: build the document from a doctored table ----------------------------


def test_diff_notices_a_missing_route(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.path == "/users/{id}" and s.method == "GET")
    doc = _doc_from(monkeypatch, ROUTES[:i] + ROUTES[i + 1:])
    assert contract_diff(doc, ROUTES) == ["GET /api/v1/users/{id} is a route but missing from the document"]


def test_diff_notices_an_extra_route(monkeypatch: pytest.MonkeyPatch) -> None:
    def delete_ghost(ctx: Any, id: int) -> None:
        return None

    ghost = RouteSpec("DELETE", "/ghosts/{id}", delete_ghost, "Delete a ghost", "ghosts", responses={204: None})
    doc = _doc_from(monkeypatch, [*ROUTES, ghost])
    assert contract_diff(doc, ROUTES) == ["DELETE /api/v1/ghosts/{id} is documented but not a route"]


def test_diff_notices_a_changed_method(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.path == "/users/{id}" and s.method == "PATCH")
    doc = _doc_from(monkeypatch, [dataclasses.replace(s, method="PUT") if j == i else s
                                  for j, s in enumerate(ROUTES)])
    problems = contract_diff(doc, ROUTES)
    assert "PUT /api/v1/users/{id} is documented but not a route" in problems
    assert "PATCH /api/v1/users/{id} is a route but missing from the document" in problems


def test_diff_notices_a_changed_response_model(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.method == "GET" and s.path == "/users/{id}")
    other = next(m for s in ROUTES for m in s.responses.values()
                 if isinstance(m, type) and m is not ROUTES[i].responses[200])
    doc = _doc_from(monkeypatch, [dataclasses.replace(s, responses={200: other}) if j == i else s
                                  for j, s in enumerate(ROUTES)])
    assert any(p.startswith("GET /api/v1/users/{id}: 200 response schema differs") for p in contract_diff(doc, ROUTES))


def test_diff_notices_a_changed_status(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.method == "POST" and s.path == "/users")
    doc = _doc_from(monkeypatch, [dataclasses.replace(s, responses={200: s.responses[201]}) if j == i else s
                                  for j, s in enumerate(ROUTES)])
    assert contract_diff(doc, ROUTES) == ["POST /api/v1/users: responses ['200'], route declares ['201']"]


def test_diff_notices_a_changed_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.body is not None)
    other = next(s.body for s in ROUTES if s.body is not None and s.body is not ROUTES[i].body)
    doc = _doc_from(monkeypatch, [dataclasses.replace(s, body=other) if j == i else s
                                  for j, s in enumerate(ROUTES)])
    where = f"{ROUTES[i].method} {ROUTES[i].full_path}"
    assert contract_diff(doc, ROUTES) == [f"{where}: request schema (application/json) differs from "
                                          f"{ROUTES[i].body.__name__}"]


def test_diff_notices_a_dropped_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.body is not None)
    doc = _doc_from(monkeypatch, [dataclasses.replace(s, body=None) if j == i else s
                                  for j, s in enumerate(ROUTES)])
    assert contract_diff(doc, ROUTES) == [f"{ROUTES[i].method} {ROUTES[i].full_path}: request body missing"]


def test_diff_notices_query_and_path_parameter_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: "limit" in s.query)
    changed = copy.deepcopy(ROUTES[i].query)
    changed["limit"] = dataclasses.replace(changed["limit"], maximum=10_000)
    changed["colour"] = Query(str)
    j = _pick(lambda s: s.path == "/users/{id}" and s.method == "GET")
    table = [dataclasses.replace(s, query=changed) if k == i else
             dataclasses.replace(s, str_params=("id",)) if k == j else s for k, s in enumerate(ROUTES)]
    problems = contract_diff(_doc_from(monkeypatch, table), ROUTES)
    where = f"{ROUTES[i].method} {ROUTES[i].full_path}"
    assert f"{where}: extra parameter ('colour', 'query')" in problems
    assert any(p.startswith(f"{where}: parameter ('limit', 'query') is") for p in problems)
    assert any(p.startswith("GET /api/v1/users/{id}: parameter ('id', 'path') is") for p in problems)
    assert len(problems) == 3


def test_diff_notices_changed_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    i = _pick(lambda s: s.path == "/users" and s.method == "GET")
    doc = _doc_from(monkeypatch, [dataclasses.replace(s, auth="none") if j == i else s
                                  for j, s in enumerate(ROUTES)])
    assert contract_diff(doc, ROUTES) == ["GET /api/v1/users: security [], route auth is 'bearer'"]


def test_diff_notices_a_hand_edited_document() -> None:
    doc = json.loads(json.dumps(openapi_mod.build_document()))
    del doc["paths"]["/api/v1/healthz"]["get"]["responses"]["503"]
    doc["paths"]["/api/v1/users"]["get"]["parameters"].pop()
    problems = contract_diff(doc, ROUTES)
    assert "GET /api/v1/healthz: responses ['200'], route declares ['200', '503']" in problems
    assert any(p.startswith("GET /api/v1/users: missing parameter") for p in problems)

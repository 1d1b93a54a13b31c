"""The OpenAPI 3 document, built from the route table (``control.web.routing.ROUTES``)."""

from __future__ import annotations

import re
from typing import Any

import pydantic

from control import __version__
from control.core.schemas import MAX_ID
from control.web.routing import API_PREFIX, BINARY, ROUTES, Query, RouteSpec, route

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"},
                                            "message": {"type": "string"},
                                            "details": {"type": "array", "description": (
                                                "Item by item (a batch): index, status, field, message"),
                                                "items": {"type": "object", "properties": {
                                                    "index": {"type": "integer"},
                                                    "status": {"type": "integer"},
                                                    "field": {"type": "string"},
                                                    "message": {"type": "string"}}}}}}},
}
_TYPES = {int: "integer", str: "string", float: "number", bool: "boolean"}


def component_name(model: type[pydantic.BaseModel]) -> str:
    """OpenAPI allows only ``[A-Za-z0-9._-]`` in component names; generics are ``Page[UserOut]``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.__name__)


def _schema_ref(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                         mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[component_name(model)] = schema
        return {"$ref": f"#/components/schemas/{component_name(model)}"}
    return model  # a plain JSON schema dict


def _request_schema(model: type[pydantic.BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                     mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[component_name(model) + "Input"] = schema
    return {"$ref": f"#/components/schemas/{component_name(model)}Input"}


def _query_param(name: str, q: Query) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _TYPES[q.type]}
    if q.default is not None:
        schema["default"] = q.default
    if q.minimum is not None:
        schema["minimum"] = q.minimum
    if q.maximum is not None:
        schema["maximum"] = q.maximum
    if q.enum:
        schema["enum"] = list(q.enum)
    return {"name": name, "in": "query", "required": False, "description": q.description,
            "schema": schema}


def path_schema(spec: RouteSpec, name: str) -> dict[str, Any]:
    """Ids are 1..2^63-1; the server answers any other number with 404 (``routing._check_ids``)."""
    if name in spec.str_params:
        return {"type": "string"}
    return {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def _body_required(model: type[pydantic.BaseModel]) -> bool:
    """A body whose fields are all optional (a PATCH) may be left out: it means ``{}``."""
    return bool(model.model_json_schema(mode="validation").get("required")) or \
        issubclass(model, pydantic.RootModel)


def _operation(spec: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for name in spec.path.split("{")[1:]:
        pname = name.split("}")[0]
        params.append({"name": pname, "in": "path", "required": True,
                       "schema": path_schema(spec, pname)})
    params += [_query_param(n, q) for n, q in spec.query.items()]
    op: dict[str, Any] = {"summary": spec.summary, "tags": [spec.tag],
                          "operationId": spec.handler.__name__, "parameters": params,
                          "responses": {}}
    if spec.auth == "bearer":
        op["security"] = [{"bearer": []}]
    elif spec.auth == "node":
        op["security"] = [{"nodeSignature": []}]
    else:
        op["security"] = []
    if spec.body is not None:
        op["requestBody"] = {"required": _body_required(spec.body), "content": {
            "application/json": {"schema": _request_schema(spec.body, components)}}}
    if spec.form is not None:
        schema = _request_schema(spec.form, components)
        op["requestBody"] = {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": schema},
            "application/json": {"schema": schema}}}
    for status, model in spec.responses.items():
        if model is None:
            op["responses"][str(status)] = {"description": "No content"}
        elif model == BINARY:
            op["responses"][str(status)] = {"description": "The bytes", "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
        else:
            op["responses"][str(status)] = {"description": "OK", "content": {
                "application/json": {"schema": _schema_ref(model, components)}}}
    op["responses"]["default"] = {"description": "Error", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return op


def build_document() -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for spec in ROUTES:
        paths.setdefault(spec.full_path, {})[spec.method.lower()] = _operation(spec, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "zonefarm control plane", "version": __version__},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Root secret, user token or provider token"},
                "nodeSignature": {"type": "apiKey", "in": "header", "name": "X-Zonefarm-Signature",
                                  "description": "HMAC-SHA256 with the node's own key (X-Zonefarm-Node, "
                                                 "X-Zonefarm-Key-Generation) over timestamp, nonce, node, "
                                                 "key generation, method, path and body digest "
                                                 "(docs/security.md)"},
            },
        },
    }


_DOCUMENT: dict[str, Any] | None = None


@route("GET", "/openapi.json", summary="This document", tag="meta", auth="none",
       responses={200: {"type": "object"}})
def get_openapi(ctx: Any) -> dict[str, Any]:
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = build_document()
    return _DOCUMENT


__all__ = ["build_document", "API_PREFIX"]

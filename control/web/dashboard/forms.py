"""The submit form, generated from a task type's params JSON Schema (``GET /task-types``).

Each top-level property becomes one labelled field whose widget fits its type: text,
number, checkbox, a choice for an enum, one item per line for a list of strings,
``KEY=value`` lines for a string map, one command per line (split like a shell, never
run by one) for a list of argv lists, and JSON for anything else. The submitted values
are turned back into params, checked against the same schema and the API's own request
model for field-level errors, and the API checks everything again when the task is
submitted: the form adds messages next to fields, not rules.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pydantic

from control.farm.schemas import TaskCreate

PREFIX = "p."
COMMON = ("queue", "target", "space", "priority", "timeout", "max_attempts")


@dataclass
class FormField:
    name: str
    label: str
    kind: str  # text | number | integer | checkbox | select | lines | keyvalue | commands | json
    required: bool = False
    help: str = ""
    options: list[str] = field(default_factory=list)
    value: str = ""
    error: str | None = None

    @property
    def input_name(self) -> str:
        return PREFIX + self.name

    @property
    def input_id(self) -> str:
        return "f-" + self.name


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    """Follow a local ``$ref`` (``#/$defs/x``) once; the catalogue's schemas use no others."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = schema
        for part in node["$ref"][2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target
    return node


def _type(node: dict[str, Any]) -> str | None:
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def _is_string_list(schema: dict[str, Any], node: dict[str, Any]) -> bool:
    items = _resolve(schema, node.get("items", {}))
    return _type(node) == "array" and isinstance(items, dict) and _type(items) == "string"


def _widget(schema: dict[str, Any], node: dict[str, Any]) -> tuple[str, list[str]]:
    if isinstance(node.get("enum"), list) and all(isinstance(v, str) for v in node["enum"]):
        return "select", list(node["enum"])
    kind = _type(node)
    if kind == "string":
        return "text", []
    if kind in ("integer", "number"):
        return kind, []
    if kind == "boolean":
        return "checkbox", []
    if _is_string_list(schema, node):
        return "lines", []
    if kind == "array" and _is_string_list(schema, _resolve(schema, node.get("items", {}))):
        return "commands", []
    extra = node.get("additionalProperties")
    if kind == "object" and isinstance(extra, dict) and _type(extra) == "string" and not node.get("properties"):
        return "keyvalue", []
    return "json", []


HINTS = {
    "lines": "One item per line.",
    "keyvalue": "One KEY=value per line.",
    "commands": "One command per line; words are split like a shell does (quotes group words), "
                "but no shell runs them.",
    "json": "JSON.",
}


def fields_for(schema: dict[str, Any] | None) -> list[FormField]:
    """The params fields, in the schema's order; a type without a schema takes one JSON object."""
    if not schema or not isinstance(schema.get("properties"), dict):
        return [FormField("params", "Params", "json", help="Any JSON object.", value="{}")]
    required = set(schema.get("required") or [])
    out = []
    for name, raw in schema["properties"].items():
        node = _resolve(schema, raw)
        if not isinstance(node, dict):
            node = {}
        kind, options = _widget(schema, node)
        help_text = " ".join(p for p in (node.get("description", ""), HINTS.get(kind, "")) if p)
        default = node.get("default")
        value = "" if default is None else (json.dumps(default) if kind == "json" else str(default))
        out.append(FormField(name, name.replace("_", " ").capitalize(), kind, name in required,
                             help_text, options, value))
    return out


def _parse_one(f: FormField, raw: str) -> Any:
    """The JSON value of one field, or raise ValueError with a message for the field."""
    if f.kind == "checkbox":
        return raw in ("on", "true", "1")
    text = raw.strip() if f.kind not in ("lines", "keyvalue", "commands") else raw
    if f.kind == "text" or f.kind == "select":
        return text
    if f.kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if f.kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number") from None
    if f.kind == "lines":
        return [line for line in text.splitlines() if line.strip()]
    if f.kind == "keyvalue":
        pairs = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"line {n}: expected KEY=value")
            pairs[key.strip()] = value
        return pairs
    if f.kind == "commands":
        commands = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                commands.append(shlex.split(line))
            except ValueError as exc:
                raise ValueError(f"line {n}: {exc}") from None
        return commands
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def read_params(fields: list[FormField], form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Params from the submitted form, and per-field errors; blank optional fields are left out."""
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        raw = form.get(f.input_name, "")
        f.value = raw
        if f.kind != "checkbox" and not raw.strip():
            continue
        try:
            value = _parse_one(f, raw)
        except ValueError as exc:
            errors[f.name] = str(exc)
            continue
        if f.name == "params" and f.kind == "json" and len(fields) == 1:
            if not isinstance(value, dict):
                errors[f.name] = "must be a JSON object"
                continue
            return value, errors
        if f.kind == "checkbox" and not value and not f.required:
            continue  # an unticked box sends nothing: leave the schema's default
        params[f.name] = value
    return params, errors


def schema_errors(schema: dict[str, Any] | None, params: dict[str, Any]) -> dict[str, str]:
    """Field name -> first problem, from the type's JSON Schema (the API runs the same check)."""
    if not schema:
        return {}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    out: dict[str, str] = {}
    for error in sorted(cls(schema).iter_errors(params), key=lambda e: list(e.absolute_path)):
        if error.absolute_path:
            name = str(error.absolute_path[0])
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in list(error.absolute_path)[1:])
            message = f"{where.lstrip('.')}: {error.message}" if where else error.message
        elif error.validator == "required":
            missing = [m for m in error.validator_value if m not in params]
            name, message = (missing[0] if missing else "params"), "required"
        else:
            name, message = "params", error.message
        out.setdefault(name, message)
    return out


def common_errors(body: dict[str, Any]) -> dict[str, str]:
    """Field-level errors of the non-params fields, from the API's own request model."""
    try:
        TaskCreate.model_validate(body)
    except pydantic.ValidationError as exc:
        out: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            name = loc[0] if loc and loc[0] in COMMON else "form"
            out.setdefault(name, err["msg"])
        return out
    return {}


def api_error_field(message: str) -> tuple[str, str]:
    """The field an API 422 message names (``"space: not a member"``), or ``form``."""
    head, sep, rest = message.partition(":")
    head = head.strip()
    if sep and head in COMMON:
        return head, rest.strip()
    if sep and head.startswith("params."):
        return head[len("params."):].split(".")[0].split("[")[0], message
    return "form", message

"""Task types: a playbook ``playbooks/tasks/<name>.yml`` and its params schema beside it.

Z-Node's ``{Name, Params}``: a new task type is just a playbook. Its
``<name>.schema.json`` (JSON Schema 2020-12) declares the params; a type without one
takes any JSON object. Submitting an unknown name or params that do not fit is a 422
naming the field. Schemas are compiled once and reloaded when the file changes.

Beyond the schema, every type's params are held to what the worker can honour:

* no string anywhere in them holds a NUL byte (no argv entry, environment value or path
  can carry one; the runner would crash and the task sit ``assigned``);
* ``"x-zonefarm-refused": {"<param>": "<why>"}`` names params that are refused outright
  with that reason (the container type's ``volumes``: host paths are never mounted);
* ``"x-zonefarm-internal": "<why>"`` marks a type the zone makes tasks of itself (transfers);
  submitting one is refused with that reason;
* ``"x-zonefarm-image": "<param>"`` names the param holding a container image, which
  must match the site's ``container_images`` (``image_problem``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import jsonschema

from control.core.paths import share_dir

TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_cache: dict[str, tuple[float, jsonschema.protocols.Validator | None]] = {}
_lock = threading.Lock()


class UnknownTaskType(LookupError):
    pass


def tasks_dir() -> Path:
    """``ZONEFARM_TASKS_DIR`` when set, else ``playbooks/tasks`` in the share dir."""
    env = os.environ.get("ZONEFARM_TASKS_DIR")
    if env:
        return Path(env)
    return share_dir() / "playbooks" / "tasks"


def playbook(name: str) -> Path:
    if not TYPE_NAME.match(name):
        raise UnknownTaskType(name)
    path = tasks_dir() / f"{name}.yml"
    if not path.is_file():
        raise UnknownTaskType(name)
    return path


def names() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yml") if TYPE_NAME.match(p.stem))


def _validator(name: str) -> jsonschema.protocols.Validator | None:
    path = tasks_dir() / f"{name}.schema.json"
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    with _lock:
        cached = _cache.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        schema = json.loads(path.read_text())
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validator = cls(schema)
        _cache[name] = (mtime, validator)
        return validator


def schema(name: str) -> dict[str, Any] | None:
    playbook(name)
    validator = _validator(name)
    return dict(validator.schema) if validator is not None else None


def _where(error: jsonschema.ValidationError) -> str:
    path = "params"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        if missing:
            path += f".{missing.group(1)}"
    elif error.validator == "additionalProperties":
        extra = re.search(r"\('([^']+)'", error.message)
        if extra:
            path += f".{extra.group(1)}"
    return path


def _nul_bytes(value: Any, path: str) -> list[str]:
    """Where a NUL byte hides in ``value``: in a string, or in a key of an object."""
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_bytes(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            where = f"{path}.{key.replace(chr(0), '?')}"
            if "\x00" in key:
                out.append(where + " (its name)")
            out += _nul_bytes(item, where)
        return out
    return []


def validate(name: str, params: Any) -> list[str]:
    """Problems with ``params`` for task type ``name``, each naming the field; [] if fine.

    Raises UnknownTaskType for a name with no playbook.
    """
    playbook(name)
    if not isinstance(params, dict):
        return ["params: must be a JSON object"]
    problems = [f"{where}: holds a NUL byte, which no argument, environment value or path can carry"
                for where in _nul_bytes(params, "params")]
    validator = _validator(name)
    if validator is None:
        return problems
    refused = validator.schema.get("x-zonefarm-refused") or {}
    problems += [f"params.{key}: {refused[key]}" for key in sorted(refused) if key in params]
    if problems:
        return problems
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    return [f"{_where(e)}: {e.message}" for e in errors]


def image_problem(name: str, params: dict[str, Any], allowed: tuple[str, ...]) -> str | None:
    """Why this task's container image may not run here, naming the field; None if it may.

    Only for types whose schema names an image param (``x-zonefarm-image``). ``allowed``
    holds exact names and globs (the ``container_images`` setting); empty allows none,
    so a site runs no image its operator did not list.
    """
    validator = _validator(name)
    key = validator.schema.get("x-zonefarm-image") if validator is not None else None
    if not key or not isinstance(params.get(key), str):
        return None
    image = params[key]
    if any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
        return None
    if not allowed:
        return (f"params.{key}: this site allows no container image (its container_images setting is empty); "
                "ask the operator to list the images tasks may run")
    return (f"params.{key}: image {image!r} is not among the images this site allows "
            f"(container_images: {', '.join(allowed)})")


def internal(name: str) -> str | None:
    """Why users may not submit this type (``"x-zonefarm-internal": "<why>"``: the zone makes its tasks)."""
    validator = _validator(name)
    why = validator.schema.get("x-zonefarm-internal") if validator is not None else None
    return str(why) if why else None


def needs_space(name: str) -> bool:
    """Types whose schema says ``"x-zonefarm-needs-space": true`` (uploads) need a space."""
    validator = _validator(name)
    return bool(validator is not None and validator.schema.get("x-zonefarm-needs-space"))

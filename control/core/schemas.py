"""The base of every request model, and the page every list route answers with.

Requests forbid unknown fields, so a typo is a 422 naming the field instead of being
silently ignored. They are strict: ``"active": 0`` or ``"size": "5"`` is a 422, as the
OpenAPI document (booleans are booleans, integers are integers) says.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator

T = TypeVar("T")
MAX_ID = 2**63 - 1  # ids and counts are 64-bit signed in SQLite and PostgreSQL


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


def exactly_one(*names: str) -> Any:
    """A model validator: exactly one of the fields ``names`` is given (not None), else a 422
    naming them. Assign it in the class body: ``_one_timing = exactly_one("cron", "interval")``."""

    def check(self: BaseModel) -> BaseModel:
        if sum(getattr(self, name) is not None for name in names) != 1:
            raise ValueError("give exactly one of " + " and ".join(f'"{name}"' for name in names))
        return self

    return model_validator(mode="after")(check)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int

"""The base of every request model, and the page every list route answers with.

Requests forbid unknown fields, so a typo is a 422 naming the field instead of being
silently ignored. They are strict: ``"active": 0`` or ``"size": "5"`` is a 422, as the
OpenAPI document (booleans are booleans, integers are integers) says.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")
MAX_ID = 2**63 - 1  # ids and counts are 64-bit signed in SQLite and PostgreSQL


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int

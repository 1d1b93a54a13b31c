"""Request and response models shared by the registry routes.

Requests forbid unknown fields, so a typo is a 422 naming the field instead of
being silently ignored.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

USERNAME = r"^[a-z0-9][a-z0-9._-]{1,63}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
Role = Literal["member", "admin", "owner"]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class TokenRequest(Input):
    grant_type: Literal["password"]
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    scope: str | None = None


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int


class UserCreate(Input):
    username: str = Field(pattern=USERNAME)
    password: str = Field(min_length=8, max_length=1024)
    full_name: str = Field(default="", max_length=200)
    email: str = Field(default="", pattern=r"^$|" + EMAIL[1:], max_length=254)
    active: bool = True


class UserUpdate(Input):
    full_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, pattern=r"^$|" + EMAIL[1:], max_length=254)
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    active: bool | None = None


class UserOut(BaseModel):
    id: int
    username: str
    full_name: str
    email: str | None = Field(description="Shown to the user itself and to the administrator")
    active: bool
    created_at: str
    updated_at: str


class KeyCreate(Input):
    name: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=16, max_length=16384,
                     description="OpenSSH public key line, or its base64 body alone")


class KeyOut(BaseModel):
    name: str
    type: str
    key: str
    fingerprint: str = Field(description="Hex SHA-256 of the key blob; used in paths")
    fingerprint_openssh: str = Field(description="As `ssh-keygen -l` prints it")
    created_at: str


class MemberRole(Input):
    role: Role = "member"

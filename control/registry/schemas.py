"""Request and response models shared by the registry routes.

Requests forbid unknown fields, so a typo is a 422 naming the field instead of
being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from control.core.schemas import MAX_ID, Input

USERNAME = r"^[a-z0-9][a-z0-9._-]{1,63}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
Role = Literal["member", "admin", "owner"]


# A password is taken as typed: other strings lose surrounding whitespace, a password keeps it.
Secret = Annotated[str, StringConstraints(strip_whitespace=False)]
# Optional, but never null: a form body cannot say null, so the document does not offer it.
Scope = Literal["write", "read"]
SCOPE_DOC = "`read` makes a read-only token (any write answers 403); default `write`"


def _no_null_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # null is not one of the values the document offers


class PasswordGrant(Input):
    grant_type: Literal["password"]
    username: str = Field(min_length=1, max_length=64, pattern=r"\S")
    password: Secret = Field(min_length=1, max_length=1024)
    scope: Scope | SkipJsonSchema[None] = Field(default=None, description=SCOPE_DOC,
                                                json_schema_extra=_no_null_default)
    refresh: Literal["true", "false"] = Field(
        default="true", description="`false`: no refresh token, only the access token (a browser session, "
                                    "which ends at logout, has no use for one nobody could revoke)")


class RefreshGrant(Input):
    grant_type: Literal["refresh_token"]
    refresh_token: str = Field(min_length=1, max_length=200, pattern=r"\S",
                               description="From an earlier answer; good for one exchange")
    scope: Scope | SkipJsonSchema[None] = Field(
        default=None, description="May narrow `write` to `read`, never widen; default: unchanged",
        json_schema_extra=_no_null_default)


class TokenRequest(RootModel[Annotated[PasswordGrant | RefreshGrant, Field(discriminator="grant_type")]]):
    """OAuth2 password grant, or the refresh-token grant (as Zimfarm's dispatcher has)."""


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int
    refresh_token: str | None = Field(description="Exchange once with grant_type=refresh_token; null when "
                                                  "the password grant said refresh=false")
    scope: Scope


class TokenInfo(BaseModel):
    """A user's token as the listing shows it: never the secret, which is not stored."""

    id: int
    kind: Literal["access", "refresh"]
    scope: Scope
    created_at: str
    expires_at: str | None
    last_used_at: str | None = Field(description="To the minute; null when never used")
    current: bool = Field(description="The token this request carries")


class UserCreate(Input):
    username: str = Field(pattern=USERNAME)
    password: Secret = Field(min_length=8, max_length=1024)
    full_name: str = Field(default="", max_length=200)
    email: str = Field(default="", pattern=r"^$|" + EMAIL[1:], max_length=254)
    active: bool = True


class UserUpdate(Input):
    full_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, pattern=r"^$|" + EMAIL[1:], max_length=254)
    password: Secret | None = Field(default=None, min_length=8, max_length=1024,
                                    description="Needs current_password (unless root); revokes the "
                                                "user's other tokens")
    current_password: Secret | None = Field(default=None, min_length=1, max_length=1024)
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


# --- groups, spaces, providers, support, changes -------------------------------------

GroupRoleInSpace = Literal["member", "admin"]
HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
MIN_SUPPORT = 1024 * 1024
MAX_BYTES = 2**62
MAX_TTL = 10 * 365 * 86400  # the invite_max_ttl setting is the real bound
REGION = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
REGION_DOC = ("The region of the provider's storage (as nodes name theirs): a task's outputs go to a "
              "provider in its node's region first; null: none")
LIMIT_DOC = "Total bytes the provider grants over all its supports; null: no limit"


class GroupCreate(Input):
    name: str = Field(pattern=NAME, max_length=100)
    owner: int | None = Field(default=None, ge=1, le=MAX_ID,
                              description="User id made owner (root only); a user creating it owns it")


class GroupUpdate(Input):
    name: str | None = Field(default=None, pattern=NAME, max_length=100)


class GroupOut(BaseModel):
    id: int
    name: str
    role: Role | None = Field(description="The caller's effective role; null for root/provider")
    created_at: str
    updated_at: str


class SpaceCreate(GroupCreate):
    pass


class SpaceUpdate(GroupUpdate):
    pass


class SpaceOut(GroupOut):
    pass


class MemberOut(BaseModel):
    id: int = Field(description="User id")
    username: str
    full_name: str
    role: Role


class GroupMemberOut(BaseModel):
    id: int = Field(description="Group id")
    name: str
    role: Role | None = Field(description="The group's role in the space; null for a child group")


class SpaceGroupRole(Input):
    role: GroupRoleInSpace = "member"


class EffectiveUserOut(BaseModel):
    id: int
    username: str
    full_name: str
    role: Role = Field(description="Effective role: the highest of the direct role and the "
                                   "roles of the groups the user reaches the entity through")
    direct: bool = Field(description="Also a direct member")
    membership: list[list[int]] = Field(
        description="Each chain of group ids (outermost first) the user is a member through")


class ProviderCreate(Input):
    name: str = Field(pattern=NAME, max_length=100)
    domain: str = Field(pattern=HOST, max_length=253)
    admin_email: str = Field(pattern=EMAIL, max_length=254)
    sftp_host: str | None = Field(default=None, pattern=HOST, max_length=253)
    sftp_port: int = Field(default=22, ge=1, le=65535)
    sftp_user: str | None = Field(default=None, pattern=USERNAME, max_length=64)
    storage_path: str | None = Field(default=None, pattern=r"^/[^\x00]*$", max_length=1024,
                                     description="Absolute directory; spaces live in "
                                                 "storage_path/<space id>")
    support_limit: int | None = Field(default=None, ge=0, le=MAX_BYTES, description=LIMIT_DOC)
    region: str | None = Field(default=None, pattern=REGION, max_length=100, description=REGION_DOC)


class ProviderUpdate(Input):
    name: str | None = Field(default=None, pattern=NAME, max_length=100)
    domain: str | None = Field(default=None, pattern=HOST, max_length=253)
    admin_email: str | None = Field(default=None, pattern=EMAIL, max_length=254)
    sftp_host: str | None = Field(default=None, pattern=HOST, max_length=253)
    sftp_port: int | None = Field(default=None, ge=1, le=65535)
    sftp_user: str | None = Field(default=None, pattern=USERNAME, max_length=64)
    storage_path: str | None = Field(default=None, pattern=r"^/[^\x00]*$", max_length=1024)
    support_limit: int | None = Field(default=None, ge=0, le=MAX_BYTES,
                                      description=LIMIT_DOC + "; null removes the limit")
    region: str | None = Field(default=None, pattern=REGION, max_length=100, description=REGION_DOC)


class ProviderOut(BaseModel):
    id: int
    name: str
    domain: str
    admin_email: str
    sftp_host: str | None
    sftp_port: int
    sftp_user: str | None
    storage_path: str | None
    support_limit: int | None = Field(description=LIMIT_DOC)
    granted: int = Field(description="Bytes the provider grants now, over all its supports")
    region: str | None = Field(description=REGION_DOC)
    created_at: str
    updated_at: str


class ProviderRegistered(BaseModel):
    provider: ProviderOut
    token: str = Field(description="Provider token; shown once, never stored in plaintext")


class SupportSize(Input):
    size: int = Field(ge=MIN_SUPPORT, le=MAX_BYTES, description="Bytes; at least 1 MiB")


class SupportOut(BaseModel):
    space_id: int
    space_name: str
    provider_id: int
    provider_name: str
    size: int
    used: int | None = Field(description="Bytes in the space's directory on this provider at "
                                         "measured_at (the provider agent's report); null: not measured yet")
    files: int | None = Field(description="Files there at measured_at; null: not measured yet")
    measured_at: str | None = Field(description="When the provider last reported the space's usage")
    over_quota: bool = Field(description="used > size: uploads to this provider are refused until it is "
                                         "back under")
    created_at: str
    updated_at: str


class UsageEntry(Input):
    space_id: int = Field(ge=1, le=MAX_ID)
    used: int = Field(ge=0, le=MAX_ID, description="Bytes in the space's directory")
    files: int = Field(ge=0, le=MAX_ID, description="Regular files in the space's directory")


class UsageReport(Input):
    spaces: list[UsageEntry] = Field(max_length=10000, description="One entry per supported space "
                                     "measured; a space the provider does not support is refused")


class UsageAccepted(BaseModel):
    updated: int = Field(description="Supports whose usage or over-quota state changed")
    over_quota: list[int] = Field(description="Spaces over their size on this provider now")
    ignored: list[int] = Field(description="Spaces reported that the provider does not support "
                                           "(revoked meanwhile): nothing recorded for them")


class ChangeOut(BaseModel):
    seq: int
    ts: str
    entity: str
    entity_id: int
    op: Literal["create", "update", "delete"]
    data: dict[str, Any] | None
    space_id: int | None
    provider_id: int | None
    group_id: int | None
    user_id: int | None


class ChangesOut(BaseModel):
    changes: list[ChangeOut]
    last_seq: int = Field(description="Resume with since=last_seq; covers changes filtered out")


# --- invite tokens and support tokens ------------------------------------------------

InviteSubject = Literal["user", "group"]
TokenState = Literal["active", "used", "expired", "revoked"]
SECRET = Field(min_length=1, max_length=200, description="The token as it was shown when issued")
EXPIRES_IN = Field(default=None, ge=60, le=MAX_TTL,
                   description="Seconds until it expires; default 7 days, at most the "
                               "invite_max_ttl setting")


class InviteCreate(Input):
    role: Role = Field(default="member", description="The role the newcomer gets: at most what "
                                                     "the issuer may grant (only an owner "
                                                     "invites admins and owners)")
    subject: InviteSubject = Field(default="user", description="Who redeems it: a user for "
                                                               "itself, or a user for a group "
                                                               "it administers")
    uses: int = Field(default=1, ge=1, le=10_000, description="How many times it can be redeemed")
    expires_in: int | None = EXPIRES_IN


class InviteOut(BaseModel):
    id: int
    space_id: int | None
    group_id: int | None
    role: Role
    subject: InviteSubject
    uses: int = Field(description="Times redeemed")
    max_uses: int
    state: TokenState
    expires_at: str
    created_by: int | None = Field(description="Issuing user; null for the administrator")
    created_at: str


class InviteIssued(BaseModel):
    invite: InviteOut
    token: str = Field(description="The invite token; shown once, never stored in plaintext")


class Redeem(Input):
    """The body that redeems a secret shown once (an invite, a support token): the token first."""
    token: str = SECRET


class InviteRedeem(Redeem):
    group: int | None = Field(default=None, ge=1, le=MAX_ID,
                              description="For an invite meant for a group: the group (which "
                                          "the caller administers) that joins")


class JoinedOut(BaseModel):
    target: Literal["space", "group"]
    target_id: int
    target_name: str
    member: InviteSubject
    member_id: int
    role: Role | None = Field(description="The new member's role; null for a nested group")


class SupportTokenCreate(Input):
    provider: int | None = Field(default=None, ge=1, le=MAX_ID,
                                 description="Only this provider may redeem it; omitted: any")
    size: int | None = Field(default=None, ge=MIN_SUPPORT, le=MAX_BYTES,
                             description="Bytes asked for; the provider grants what it decides")
    expires_in: int | None = EXPIRES_IN


class SupportTokenOut(BaseModel):
    id: int
    space_id: int
    provider_id: int | None = Field(description="The one provider that may redeem it; null: any")
    size: int | None
    state: TokenState
    used_by: int | None = Field(description="The provider that redeemed it")
    expires_at: str
    created_by: int | None
    created_at: str


class SupportTokenIssued(BaseModel):
    support_token: SupportTokenOut
    token: str = Field(description="The support token to hand to the provider; shown once")


class SupportRedeem(Redeem):
    size: int | None = Field(default=None, ge=MIN_SUPPORT, le=MAX_BYTES,
                             description="Bytes the provider grants; default: what the token asks")


# --- effective relations ----------------------------------------------------------------


class GroupLinkOut(BaseModel):
    id: int
    name: str
    direct: bool = Field(description="Also a direct parent (or child), not only through nesting")


class UserRelationOut(BaseModel):
    id: int = Field(description="Group or space id")
    name: str
    role: Role = Field(description="The user's effective role there")
    direct: bool = Field(description="The user is also a direct member")
    membership: list[list[int]] = Field(
        description="Each chain of group ids (outermost first) the user is a member through; to another "
                    "user only the chains wholly of groups that user may see itself")


class ChainLink(BaseModel):
    type: Literal["space", "group", "user"]
    id: int
    name: str

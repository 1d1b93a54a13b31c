"""The federation registry: Onezone's users, groups, spaces and providers."""

from __future__ import annotations

import peewee

from control.core.models import BaseModel, JSONField, now

ROLES = ("member", "admin", "owner")


class User(BaseModel):
    username = peewee.CharField(max_length=64, unique=True)
    full_name = peewee.CharField(max_length=200, default="")
    email = peewee.CharField(max_length=254, default="")
    password_hash = peewee.CharField(max_length=200, default="")
    active = peewee.BooleanField(default=True)
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)


class SshKey(BaseModel):
    user = peewee.ForeignKeyField(User, backref="keys", on_delete="CASCADE")
    name = peewee.CharField(max_length=100)
    key = peewee.TextField()
    fingerprint = peewee.CharField(max_length=100)
    created_at = peewee.DoubleField(default=now)

    class Meta:
        indexes = ((("user", "fingerprint"), True),)


class Owned(BaseModel):
    """What a group and a space both are: a unique name, owned through their members' roles.
    Abstract: each subclass has its own table with these columns."""

    name = peewee.CharField(max_length=100, unique=True)
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)


def _role_link(name: str, owner: str, owner_model: type[Owned], member: str,
               member_model: type[BaseModel]) -> type[BaseModel]:
    """A membership table: ``member`` holds one ``role`` in ``owner``, once (a unique pair).

    Groups and spaces take users, and spaces take groups, by the same rule, so the table is
    declared once. The columns come in the order written here (id, owner, member, role),
    which is the order the tables were created in: the schema does not change.
    """
    class Meta:
        indexes = (((owner, member), True),)

    return type(name, (BaseModel,), {
        "__module__": __name__,
        "__doc__": f"A {member}'s role in a {owner}.",
        owner: peewee.ForeignKeyField(owner_model, on_delete="CASCADE"),
        member: peewee.ForeignKeyField(member_model, on_delete="CASCADE"),
        "role": peewee.CharField(max_length=10, default="member"),
        "Meta": Meta,
    })


class Group(Owned):
    pass


GroupUser = _role_link("GroupUser", "group", Group, "user", User)


class GroupChild(BaseModel):
    parent = peewee.ForeignKeyField(Group, on_delete="CASCADE", backref="child_links")
    child = peewee.ForeignKeyField(Group, on_delete="CASCADE", backref="parent_links")

    class Meta:
        indexes = ((("parent", "child"), True),)


class Space(Owned):
    pass


SpaceUser = _role_link("SpaceUser", "space", Space, "user", User)
SpaceGroup = _role_link("SpaceGroup", "space", Space, "group", Group)


class Provider(BaseModel):
    name = peewee.CharField(max_length=100, unique=True)
    domain = peewee.CharField(max_length=253)
    admin_email = peewee.CharField(max_length=254)
    # Where the provider's storage takes uploads over SFTP (the task farm's pipeline
    # upload); each supported space gets the directory ``storage_path/<space id>``.
    sftp_host = peewee.CharField(max_length=253, null=True)
    sftp_port = peewee.IntegerField(default=22)
    sftp_user = peewee.CharField(max_length=64, null=True)
    storage_path = peewee.CharField(max_length=1024, null=True)
    # The region of the provider's storage: a task's outputs go to a provider in its node's
    # region first (control.farm.uploads). None: in no region.
    region = peewee.CharField(max_length=100, null=True)
    # The total bytes the provider grants to all the spaces it supports; None: no limit.
    support_limit = peewee.BigIntegerField(null=True)
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)
    # The last ``since`` the provider polled ``GET /changes`` with: everything up to it is
    # applied on its side, so the feed head minus it is the provider's lag (GET /metrics).
    feed_acked_seq = peewee.IntegerField(null=True)
    feed_polled_at = peewee.DoubleField(null=True)


class Support(BaseModel):
    space = peewee.ForeignKeyField(Space, on_delete="CASCADE")
    provider = peewee.ForeignKeyField(Provider, on_delete="CASCADE")
    size = peewee.BigIntegerField()
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)
    # What the provider agent last measured in the space's directory (control.registry.usage);
    # None until its first report. ``over_quota``: used > size, uploads there are refused.
    used = peewee.BigIntegerField(null=True)
    files = peewee.BigIntegerField(null=True)
    measured_at = peewee.DoubleField(null=True)
    # A database default too: rows inserted by hand or by older code are not over quota.
    over_quota = peewee.BooleanField(default=False, constraints=[peewee.SQL("DEFAULT FALSE")])

    class Meta:
        indexes = ((("space", "provider"), True),)


class Token(BaseModel):
    """Bearer tokens are stored as SHA-256 digests: a database dump leaks no credential.

    A ``refresh`` token is not a bearer credential: it is exchanged once, at
    ``POST /auth/token``, for a new access token and a new refresh token.
    """

    token_hash = peewee.CharField(max_length=64, unique=True)
    kind = peewee.CharField(max_length=10)  # "user" | "provider" | "refresh"
    user = peewee.ForeignKeyField(User, null=True, on_delete="CASCADE")
    provider = peewee.ForeignKeyField(Provider, null=True, on_delete="CASCADE")
    created_at = peewee.DoubleField(default=now)
    expires_at = peewee.DoubleField(null=True)
    revoked = peewee.BooleanField(default=False)
    scope = peewee.CharField(max_length=10, default="write")  # "write" (everything) | "read"
    last_used_at = peewee.DoubleField(null=True)  # to the minute: see identity.LAST_USED_EVERY


class LoginFailure(BaseModel):
    """One failed password check, counted against a key: ``user:<name>`` or ``addr:<ip>``.

    Rows older than the throttle window are deleted as new failures arrive.
    """

    key = peewee.CharField(max_length=100)
    ts = peewee.DoubleField(default=now, index=True)

    class Meta:
        indexes = ((("key", "ts"), False),)


class Invite(BaseModel):
    """An invitation to join a space or a group (exactly one is set), redeemed by a user
    for itself or for a group it administers (``subject``). Like bearer tokens, only the
    SHA-256 digest of the secret is stored."""

    token_hash = peewee.CharField(max_length=64, unique=True)
    space = peewee.ForeignKeyField(Space, null=True, on_delete="CASCADE")
    group = peewee.ForeignKeyField(Group, null=True, on_delete="CASCADE")
    subject = peewee.CharField(max_length=10)  # "user" | "group"
    role = peewee.CharField(max_length=10, default="member")
    max_uses = peewee.IntegerField(default=1)
    uses = peewee.IntegerField(default=0)
    expires_at = peewee.DoubleField()
    revoked = peewee.BooleanField(default=False)
    created_by = peewee.IntegerField(null=True)  # user id; None for the administrator
    created_at = peewee.DoubleField(default=now)


class SupportToken(BaseModel):
    """A space admin's request for storage: a provider redeems it with the size it grants.

    ``provider`` None means any provider may redeem it. Single use; stored as a digest.
    """

    token_hash = peewee.CharField(max_length=64, unique=True)
    space = peewee.ForeignKeyField(Space, on_delete="CASCADE")
    provider = peewee.ForeignKeyField(Provider, null=True, on_delete="CASCADE")
    size = peewee.BigIntegerField(null=True)  # bytes asked for; the provider decides
    expires_at = peewee.DoubleField()
    revoked = peewee.BooleanField(default=False)
    used_at = peewee.DoubleField(null=True)
    used_by = peewee.IntegerField(null=True)  # the provider that redeemed it
    created_by = peewee.IntegerField(null=True)
    created_at = peewee.DoubleField(default=now)


class Change(BaseModel):
    """One numbered entry of the change feed; the scope columns drive provider filtering."""

    seq = peewee.AutoField()
    ts = peewee.DoubleField(default=now)
    entity = peewee.CharField(max_length=20)
    entity_id = peewee.IntegerField()
    op = peewee.CharField(max_length=10)  # create | update | delete
    data = JSONField(null=True)
    space_id = peewee.IntegerField(null=True, index=True)
    provider_id = peewee.IntegerField(null=True, index=True)
    group_id = peewee.IntegerField(null=True, index=True)
    user_id = peewee.IntegerField(null=True, index=True)
    # Who made the change (control.core.actor): root, user:<id>, provider:<id>, node:<name>...
    actor = peewee.CharField(max_length=200, default="system", index=True)


REGISTRY_MODELS = [User, SshKey, Group, GroupUser, GroupChild, Space, SpaceUser,
                   SpaceGroup, Provider, Support, Token, Invite, SupportToken, Change, LoginFailure]

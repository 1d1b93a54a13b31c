"""Users and their SSH public keys."""

from __future__ import annotations

from typing import Any

from control.core.errors import ApiError, conflict, forbidden, invalid, not_found
from control.core.models import iso, now
from control.core.schemas import Page
from control.registry import feed
from control.registry.identity import Principal, change_password, require_root, require_user_or_root
from control.registry.models import SshKey, User
from control.registry.passwords import hash_password
from control.registry.schemas import KeyCreate, KeyOut, UserCreate, UserOut, UserUpdate
from control.registry.sshkeys import parse_key
from control.web.routes.members import record_user_departures
from control.web.routing import Context, Reply, paginate, paginated_query, route


def user_out(user: User, principal: Principal | None = None) -> UserOut:
    sees_email = principal is None or principal.is_root or (
        principal.user is not None and principal.user.id == user.id)
    return UserOut(id=user.id, username=user.username, full_name=user.full_name,
                   email=user.email if sees_email else None, active=user.active,
                   created_at=iso(user.created_at), updated_at=iso(user.updated_at))


def key_out(key: SshKey) -> KeyOut:
    return KeyOut(name=key.name, type=key.key.split()[0], key=key.key, fingerprint=key.fingerprint,
                  fingerprint_openssh=_openssh(key.key), created_at=iso(key.created_at))


def _openssh(line: str) -> str:
    return parse_key(line)[3]


def get_user(user_id: int) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise not_found("user", user_id)
    return user


def _feed_data(user: User) -> dict[str, Any]:
    return {"username": user.username, "full_name": user.full_name, "active": user.active}


def _require_self_or_root(principal: Principal, user: User) -> None:
    if principal.is_root:
        return
    if principal.user is None or principal.user.id != user.id:
        raise forbidden("only the user itself or the administrator may do this")


@route("GET", "/users", summary="List users", tag="users", query=paginated_query(),
       responses={200: Page[UserOut]})
def list_users(ctx: Context) -> dict[str, Any]:
    require_user_or_root(ctx.principal)
    return paginate(User.select(), ctx, User.username, lambda u: user_out(u, ctx.principal))


@route("POST", "/users", summary="Create a user (administrator)", tag="users", body=UserCreate,
       responses={201: UserOut})
def create_user(ctx: Context) -> Reply:
    require_root(ctx.principal)
    req: UserCreate = ctx.body
    if User.select().where(User.username == req.username).exists():
        raise conflict(f"username {req.username!r} is taken")
    user = User.create(username=req.username, full_name=req.full_name, email=req.email,
                       active=req.active, password_hash=hash_password(req.password))
    feed.record("user", user.id, "create", _feed_data(user), user_id=user.id)
    return Reply(201, user_out(user, ctx.principal), {"Location": f"/api/v1/users/{user.id}"})


@route("GET", "/users/{id}", summary="Show a user", tag="users", responses={200: UserOut})
def show_user(ctx: Context, id: int) -> UserOut:
    require_user_or_root(ctx.principal)
    return user_out(get_user(id), ctx.principal)


@route("PATCH", "/users/{id}", summary="Update a user (itself or the administrator)", tag="users",
       body=UserUpdate, responses={200: UserOut})
def update_user(ctx: Context, id: int) -> UserOut | ApiError:
    user = get_user(id)
    _require_self_or_root(ctx.principal, user)
    req: UserUpdate = ctx.body
    changes = req.model_dump(exclude_unset=True)
    if "active" in changes and not ctx.principal.is_root:
        raise forbidden("only the administrator may activate or deactivate a user")
    for field in ("full_name", "email", "active"):
        if changes.get(field) is not None:
            setattr(user, field, changes[field])
    if changes.get("password"):
        refused = change_password(ctx.principal, user, changes["password"], changes.get("current_password"),
                                  max_failures=ctx.settings.login_max_failures, window=ctx.settings.login_window)
        if refused is not None:
            return refused
    user.updated_at = now()
    user.save()
    feed.record("user", user.id, "update", _feed_data(user), user_id=user.id)
    return user_out(user, ctx.principal)


@route("DELETE", "/users/{id}", summary="Delete a user (administrator)", tag="users",
       responses={204: None})
def delete_user(ctx: Context, id: int) -> None:
    require_root(ctx.principal)
    user = get_user(id)
    record_user_departures(user.id)
    feed.record("user", user.id, "delete", {"username": user.username}, user_id=user.id)
    user.delete_instance(recursive=True, delete_nullable=True)


@route("GET", "/users/{id}/keys", summary="List a user's SSH public keys", tag="users",
       responses={200: {"type": "array", "items": {"$ref": "#/components/schemas/KeyOut"}}})
def list_keys(ctx: Context, id: int) -> list[KeyOut]:
    user = get_user(id)
    if not (ctx.principal.is_root or ctx.principal.kind == "user"):
        raise forbidden("only users and the administrator may read keys")
    return [key_out(k) for k in SshKey.select().where(SshKey.user == user).order_by(SshKey.id)]


@route("POST", "/users/{id}/keys", summary="Add an SSH public key", tag="users", body=KeyCreate,
       responses={201: KeyOut})
def add_key(ctx: Context, id: int) -> Reply:
    user = get_user(id)
    _require_self_or_root(ctx.principal, user)
    req: KeyCreate = ctx.body
    try:
        _, line, fingerprint, _ = parse_key(req.key)
    except ValueError as exc:
        raise invalid(f"key: {exc}") from None
    if SshKey.select().where(SshKey.user == user, SshKey.fingerprint == fingerprint).exists():
        raise conflict(f"key {fingerprint} is already registered for this user")
    key = SshKey.create(user=user, name=req.name, key=line, fingerprint=fingerprint)
    feed.record("user_key", key.id, "create", {"fingerprint": fingerprint}, user_id=user.id)
    return Reply(201, key_out(key))


@route("DELETE", "/users/{id}/keys/{fingerprint}", summary="Delete an SSH key by fingerprint",
       tag="users", str_params=("fingerprint",), responses={204: None})
def delete_key(ctx: Context, id: int, fingerprint: str) -> None:
    user = get_user(id)
    _require_self_or_root(ctx.principal, user)
    key = SshKey.get_or_none(SshKey.user == user, SshKey.fingerprint == fingerprint.lower())
    if key is None:
        raise not_found("key", fingerprint)
    feed.record("user_key", key.id, "delete", {"fingerprint": key.fingerprint}, user_id=user.id)
    key.delete_instance()

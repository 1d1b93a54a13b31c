"""Users and their SSH public keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.core.errors import ApiError, forbidden
from control.core.models import iso
from control.core.schemas import Page
from control.registry import membership, users
from control.registry.access import require_self_or_root, sees_private, visible_relations_of_user
from control.registry.identity import Principal, change_password, require_root, require_user_or_root
from control.registry.models import Group, Space, SshKey, User
from control.registry.schemas import KeyCreate, KeyOut, UserCreate, UserOut, UserRelationOut, UserUpdate
from control.registry.sshkeys import parse_key
from control.web.listing import page_query, relations_page
from control.web.routing import Context, Reply, paginate, paginated_query, route


def user_out(user: User, principal: Principal | None = None) -> UserOut:
    sees_email = sees_private(principal, user.id)
    return UserOut(id=user.id, username=user.username, full_name=user.full_name,
                   email=user.email if sees_email else None, active=user.active,
                   created_at=iso(user.created_at), updated_at=iso(user.updated_at))


def key_out(key: SshKey) -> KeyOut:
    return KeyOut(name=key.name, type=key.key.split()[0], key=key.key, fingerprint=key.fingerprint,
                  fingerprint_openssh=_openssh(key.key), created_at=iso(key.created_at))


def _openssh(line: str) -> str:
    return parse_key(line)[3]


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
    user = users.create(req.username, req.password, req.full_name, req.email, req.active)
    return Reply(201, user_out(user, ctx.principal), {"Location": f"/api/v1/users/{user.id}"})


@route("GET", "/users/{id}", summary="Show a user", tag="users", responses={200: UserOut})
def show_user(ctx: Context, id: int) -> UserOut:
    require_user_or_root(ctx.principal)
    return user_out(users.get(id), ctx.principal)


@route("PATCH", "/users/{id}", summary="Update a user (itself or the administrator)", tag="users",
       body=UserUpdate, responses={200: UserOut})
def update_user(ctx: Context, id: int) -> UserOut | ApiError:
    user = users.get(id)
    require_self_or_root(ctx.principal, user)
    req: UserUpdate = ctx.body
    changes = req.model_dump(exclude_unset=True)
    if "active" in changes and not ctx.principal.is_root:
        raise forbidden("only the administrator may activate or deactivate a user")
    if changes.get("password"):
        # The one path for a new password: the current one (or root), throttled, and every
        # other token of the user revoked. A refusal is returned so its throttle record commits.
        refused = change_password(ctx.principal, user, changes["password"], changes.get("current_password"),
                                  max_failures=ctx.settings.login_max_failures, window=ctx.settings.login_window)
        if refused is not None:
            return refused
    users.update(user, changes)
    return user_out(user, ctx.principal)


@route("DELETE", "/users/{id}", summary="Delete a user (administrator)", tag="users",
       responses={204: None})
def delete_user(ctx: Context, id: int) -> None:
    require_root(ctx.principal)
    users.delete(users.get(id))


@route("GET", "/users/{id}/keys", summary="List a user's SSH public keys", tag="users",
       responses={200: {"type": "array", "items": {"$ref": "#/components/schemas/KeyOut"}}})
def list_keys(ctx: Context, id: int) -> list[KeyOut]:
    user = users.get(id)
    if not (ctx.principal.is_root or ctx.principal.kind == "user"):
        raise forbidden("only users and the administrator may read keys")
    return [key_out(k) for k in SshKey.select().where(SshKey.user == user).order_by(SshKey.id)]


@route("POST", "/users/{id}/keys", summary="Add an SSH public key", tag="users", body=KeyCreate,
       responses={201: KeyOut})
def add_key(ctx: Context, id: int) -> Reply:
    user = users.get(id)
    require_self_or_root(ctx.principal, user)
    req: KeyCreate = ctx.body
    return Reply(201, key_out(users.add_key(user, req.name, req.key)))


@route("DELETE", "/users/{id}/keys/{fingerprint}", summary="Delete an SSH key by fingerprint",
       tag="users", str_params=("fingerprint",), responses={204: None})
def delete_key(ctx: Context, id: int, fingerprint: str) -> None:
    user = users.get(id)
    require_self_or_root(ctx.principal, user)
    users.delete_key(user, fingerprint)


def _effective_relations(kind: str, model: type[Group] | type[Space],
                         relations: Callable[[int], list[dict[str, Any]]], how: str) -> None:
    """Declare ``GET /users/{id}/effective_<kind>``: the user's groups or spaces and through which."""

    @route("GET", f"/users/{{id}}/effective_{kind}",
           summary=f"The {kind} the user {how}, and through which (another user sees only the {kind} it is "
                   "in itself)", tag="users", query=page_query(names=True), responses={200: Page[UserRelationOut]},
           name=f"list_effective_{kind}")
    def effective(ctx: Context, id: int) -> dict[str, Any]:
        user = users.get(id)
        seen = visible_relations_of_user(ctx.principal, user.id, kind)
        entries = [e for e in relations(user.id) if seen is None or e["id"] in seen]
        return relations_page(model, entries, ctx)


_effective_relations("groups", Group, membership.user_group_relations,
                     "belongs to, directly or through nested groups")
_effective_relations("spaces", Space, membership.user_space_relations,
                     "can reach, directly or through (nested) groups")

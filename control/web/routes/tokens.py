"""OAuth2 password and refresh-token grants (as Zimfarm's dispatcher has), revocation, and a
user's list of tokens.

The password grant is throttled per username and per client address
(``control.registry.throttle``): past ``login_max_failures`` failures in ``login_window`` it
answers 429 with Retry-After, right password or not. A failure is recorded and then refused
by returning the error, so the record commits (a raised error rolls the transaction back).
"""

from __future__ import annotations

from typing import Any

from control.core.errors import ApiError, forbidden, not_found, too_many, unauthorized
from control.core.models import iso, now
from control.core.schemas import Page
from control.registry import throttle
from control.registry.identity import issue_user_tokens, redeem_refresh, revoke_user_tokens
from control.registry.models import Token, User
from control.registry.passwords import hash_password, needs_rehash, verify_password
from control.registry.schemas import PasswordGrant, RefreshGrant, TokenInfo, TokenOut, TokenRequest
from control.web.routing import Context, Query, Reply, paginate, route


def _tokens(ctx: Context, user: User, scope: str, *, refresh: bool = True) -> Reply:
    access, refresh_token = issue_user_tokens(user, scope=scope, ttl=ctx.settings.token_ttl,
                                              refresh_ttl=ctx.settings.refresh_token_ttl if refresh else None)
    return Reply(200, TokenOut(access_token=access, token_type="bearer",  # noqa: S106
                               expires_in=ctx.settings.token_ttl, refresh_token=refresh_token, scope=scope),
                 {"Cache-Control": "no-store"})


def _password_grant(ctx: Context, req: PasswordGrant) -> Reply | ApiError:
    s = ctx.settings
    limits = throttle.login_limits(req.username, ctx.remote_addr, per_user=s.login_max_failures,
                                   per_address=s.login_max_failures_per_address)
    wait = throttle.retry_after(limits, s.login_window)
    if wait is not None:
        raise too_many("too many failed logins for this user or address; try again later", wait)
    user = User.get_or_none(User.username == req.username)
    if not verify_password(user.password_hash if user else None, req.password) or user is None:
        throttle.record_failure(limits, s.login_window)
        return unauthorized("invalid username or password")
    if not user.active:
        raise unauthorized("user is not active")
    throttle.forget(throttle.user_key(req.username))
    if needs_rehash(user.password_hash):  # the cost rose since this hash was made
        user.password_hash = hash_password(req.password)
        user.save(only=[User.password_hash])
    return _tokens(ctx, user, req.scope or "write", refresh=req.refresh == "true")


def _refresh_grant(ctx: Context, req: RefreshGrant) -> Reply:
    row = redeem_refresh(req.refresh_token)
    scope = req.scope or row.scope
    if row.scope == "read" and scope != "read":
        raise forbidden("a read-only refresh token cannot give a write token")
    return _tokens(ctx, row.user, scope)


@route("POST", "/auth/token", summary="Exchange a username and password (grant_type=password), or a "
       "refresh token (grant_type=refresh_token), for an access token and a new refresh token",
       tag="auth", form=TokenRequest, auth="none", responses={200: TokenOut})
def issue_token(ctx: Context) -> Reply | ApiError:
    grant = ctx.body.root
    if isinstance(grant, RefreshGrant):
        return _refresh_grant(ctx, grant)
    return _password_grant(ctx, grant)


@route("DELETE", "/auth/token", summary="Revoke the token this request carries", tag="auth",
       responses={204: None}, read_only_ok=True)
def revoke_token(ctx: Context) -> None:
    if ctx.principal is None or ctx.principal.token_id is None:
        raise forbidden("the root secret is not a token and cannot be revoked")
    Token.update(revoked=True).where(Token.id == ctx.principal.token_id).execute()


# --- a user's tokens -----------------------------------------------------------------------

def _owned_user(ctx: Context, user_id: int) -> User:
    """The user whose tokens these are; only itself and root may see or revoke them."""
    principal = ctx.principal
    if not (principal.is_root or (principal.user is not None and principal.user.id == user_id)):
        raise forbidden("only the user itself or the administrator may see or revoke its tokens")
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise not_found("user", user_id)
    return user


def token_info(row: Token, current: int | None) -> TokenInfo:
    return TokenInfo(id=row.id, kind="refresh" if row.kind == "refresh" else "access", scope=row.scope,
                     created_at=iso(row.created_at),
                     expires_at=iso(row.expires_at) if row.expires_at is not None else None,
                     last_used_at=iso(row.last_used_at) if row.last_used_at is not None else None,
                     current=row.id == current)


def _live(user: User) -> Any:
    t = now()
    return Token.select().where(Token.user == user.id, Token.kind.in_(("user", "refresh")),
                                Token.revoked == False,  # noqa: E712
                                (Token.expires_at.is_null()) | (Token.expires_at > t))


@route("GET", "/users/{id}/tokens", summary="List a user's live tokens (never their secrets)",
       tag="auth", query={"limit": Query(int, 50, "Page size", 1, 500),
                          "offset": Query(int, 0, "Rows to skip", 0, None)},
       responses={200: Page[TokenInfo]})
def list_tokens(ctx: Context, id: int) -> dict[str, Any]:
    user = _owned_user(ctx, id)
    return paginate(_live(user), ctx, None, lambda r: token_info(r, ctx.principal.token_id))


@route("DELETE", "/users/{id}/tokens", summary="Revoke all of a user's tokens, this request's too "
       "(sign out everywhere)", tag="auth", responses={204: None})
def revoke_tokens(ctx: Context, id: int) -> None:
    revoke_user_tokens(_owned_user(ctx, id).id)


@route("DELETE", "/users/{id}/tokens/{token_id}", summary="Revoke one of a user's tokens", tag="auth",
       responses={204: None})
def revoke_one_token(ctx: Context, id: int, token_id: int) -> None:
    user = _owned_user(ctx, id)
    if not _live(user).where(Token.id == token_id).exists():
        raise not_found("token", token_id)
    Token.update(revoked=True).where(Token.id == token_id).execute()

"""OAuth2 password grant (as Zimfarm's dispatcher does) and token revocation."""

from __future__ import annotations

from control.core.errors import ApiError, unauthorized
from control.registry.identity import new_token
from control.registry.models import Token, User
from control.registry.passwords import verify_password
from control.registry.schemas import TokenOut, TokenRequest
from control.web.routing import Context, Reply, route


@route("POST", "/auth/token", summary="Exchange a username and password for an access token",
       tag="auth", form=TokenRequest, auth="none", responses={200: TokenOut})
def issue_token(ctx: Context) -> Reply:
    req: TokenRequest = ctx.body
    user = User.get_or_none(User.username == req.username)
    if not verify_password(user.password_hash if user else None, req.password) or user is None:
        raise unauthorized("invalid username or password")
    if not user.active:
        raise unauthorized("user is not active")
    plain, _ = new_token("user", user=user, ttl=ctx.settings.token_ttl)
    return Reply(200, TokenOut(access_token=plain, token_type="bearer",  # noqa: S106
                               expires_in=ctx.settings.token_ttl),
                 {"Cache-Control": "no-store"})


@route("DELETE", "/auth/token", summary="Revoke the token this request carries", tag="auth",
       responses={204: None})
def revoke_token(ctx: Context) -> None:
    if ctx.principal is None or ctx.principal.token_id is None:
        raise ApiError(422, "the root secret is not a token and cannot be revoked")
    Token.update(revoked=True).where(Token.id == ctx.principal.token_id).execute()

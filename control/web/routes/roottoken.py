"""``POST /auth/root-token``: the root secret buys an expiring, revocable administrator token.

The dashboard's administrator session needs a credential it can put in a cookie and
revoke at logout; the root secret itself is neither (it never expires, and a cookie
holding it would leak the one credential that cannot be rotated without a redeploy).
Only the secret may issue one, so a stolen administrator token cannot extend itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from control.core.errors import forbidden
from control.registry.identity import new_token, require_root
from control.web.routing import Context, Reply, route


class RootTokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int


@route("POST", "/auth/root-token",
       summary="Exchange the root secret for an expiring administrator token (revoke it with "
               "DELETE /auth/token)", tag="auth", responses={200: RootTokenOut})
def issue_root_token(ctx: Context) -> Reply:
    require_root(ctx.principal)
    if ctx.principal.token_id is not None:
        raise forbidden("only the root secret itself may issue an administrator token")
    plain, _ = new_token("root", ttl=ctx.settings.token_ttl)
    return Reply(200, RootTokenOut(access_token=plain, token_type="bearer",  # noqa: S106
                                   expires_in=ctx.settings.token_ttl), {"Cache-Control": "no-store"})

"""Who is calling the admin and session routes: the platform admin key or a session token."""

from __future__ import annotations

from starlette.requests import Request

from switchboard.auth.audit import ClientInfo
from switchboard.auth.bearer import bearer_token
from switchboard.auth.roles import ADMIN_KEY, Principal
from switchboard.runtime import Runtime

_ADMIN_KEY_PREFIX = "sk-sb-"  # the admin key and tenant API keys look like this; JWTs never do


def client_info(request: Request) -> ClientInfo:
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


async def session_principal(request: Request, rt: Runtime) -> Principal:
    """A signed-in user, from ``Authorization: Bearer <access token>``."""
    return await rt.sessions.authenticate(bearer_token(request.headers.get("authorization")))


async def admin_principal(request: Request, rt: Runtime) -> Principal:
    """The platform admin key (acting as a platform admin) or a signed-in user."""
    authorization = request.headers.get("authorization")
    token = bearer_token(authorization)
    if token.startswith(_ADMIN_KEY_PREFIX):
        await rt.admin.check(authorization)
        return ADMIN_KEY
    return await rt.sessions.authenticate(token)

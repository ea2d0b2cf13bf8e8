"""Sign-in routes under /auth/v1: password login, refresh, logout, who am I, and the caller's
own sessions (list them, end one, end all the others).

Errors use OpenAI's error object, like /admin/v1. Every failed login gets the same 401
``invalid_credentials`` whether the tenant, the e-mail or the password was wrong.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.callers import client_info, session_principal
from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse, read_json
from switchboard.auth.sessions import session_view, user_view
from switchboard.errors import InvalidRequest

_BODY_LIMIT = 16 * 1024
_NO_STORE = {"cache-control": "no-store"}


async def _body(request: Request) -> dict[str, Any]:
    body = await read_json(request, _BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


async def login(request: Request) -> Response:
    rt = runtime(request)
    body = await _body(request)
    tenant = _string(body, "tenant", required=False)
    email, password = _string(body, "email"), _string(body, "password")
    assert email is not None
    assert password is not None
    pair = await rt.sessions.login(tenant, email, password, client_info(request))
    return JSONResponse(pair.as_json(), headers=_NO_STORE)


async def refresh(request: Request) -> Response:
    rt = runtime(request)
    token = _string(await _body(request), "refresh_token")
    assert token is not None
    pair = await rt.sessions.refresh(token, client_info(request))
    return JSONResponse(pair.as_json(), headers=_NO_STORE)


async def logout(request: Request) -> Response:
    rt = runtime(request)
    principal = await session_principal(request, rt)
    await rt.sessions.logout(principal, client_info(request))
    return Response(status_code=204)


async def change_password(request: Request) -> Response:
    rt = runtime(request)
    principal = await session_principal(request, rt)
    body = await _body(request)
    current, new = _string(body, "current_password"), _string(body, "new_password")
    assert current is not None
    assert new is not None
    await rt.sessions.change_password(principal, current, new, client_info(request))
    return Response(status_code=204)


async def me(request: Request) -> Response:
    rt = runtime(request)
    principal = await session_principal(request, rt)
    assert principal.user_id is not None
    user = await rt.platform.users.get(principal.tenant_id, principal.user_id)
    return JSONResponse({**user_view(user), "session_id": principal.session_id})


async def list_sessions(request: Request) -> Response:
    """The caller's live sessions; ``current`` marks the one of this access token."""
    rt = runtime(request)
    principal = await session_principal(request, rt)
    assert principal.user_id is not None
    found = await rt.sessions.live_sessions(principal.tenant_id, principal.user_id)
    return JSONResponse(
        {"data": [session_view(s, principal.session_id) for s in found]}, headers=_NO_STORE
    )


async def end_session(request: Request) -> Response:
    """End one of the caller's own sessions (the current one: a logout); another person's
    session id is 404, like an unknown one."""
    rt = runtime(request)
    principal = await session_principal(request, rt)
    session_id = request.path_params["session_id"]
    await rt.sessions.end_own_session(principal, session_id, client_info(request))
    return Response(status_code=204)


async def end_other_sessions(request: Request) -> Response:
    """End every session of the caller but the current one."""
    rt = runtime(request)
    principal = await session_principal(request, rt)
    ended = await rt.sessions.end_other_sessions(principal, client_info(request))
    return JSONResponse({"revoked": ended})


routes = [
    Route("/auth/v1/login", login, methods=["POST"]),
    Route("/auth/v1/refresh", refresh, methods=["POST"]),
    Route("/auth/v1/logout", logout, methods=["POST"]),
    Route("/auth/v1/me", me, methods=["GET"]),
    Route("/auth/v1/password", change_password, methods=["POST"]),
    Route("/auth/v1/sessions", list_sessions, methods=["GET"]),
    Route("/auth/v1/sessions/revoke-others", end_other_sessions, methods=["POST"]),
    Route("/auth/v1/sessions/{session_id}", end_session, methods=["DELETE"]),
]

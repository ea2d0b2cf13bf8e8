"""Admin routes for a person's sign-in sessions: list the live ones, end one, or end them all
without disabling the person.

The path names the user by id alone, like ``/admin/v1/keys/{key_id}``: the guard
(`switchboard.api.admin_access`) looks them up in the caller's tenant (a platform admin's:
anywhere, platform admins included), so another tenant's user id is 404, and checks that the
caller may view them (listing) or manage them (ending). Ending goes through the same
`SessionService` as logout, so this worker refuses the sessions' access tokens at once.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.admin import _admin
from switchboard.api.admin_access import access
from switchboard.api.admin_people import _user
from switchboard.api.http import JSONResponse
from switchboard.auth.sessions import ENDED_BY_ADMIN, session_view


async def list_user_sessions(request: Request) -> Response:
    """The user's live sessions; ``current`` marks the caller's own, when it is among them."""
    rt, a = await _admin(request), access(request)
    user = _user(a)
    found = await rt.sessions.live_sessions(user.tenant_id, user.id)
    return JSONResponse({"data": [session_view(s, a.principal.session_id) for s in found]})


async def end_user_sessions(request: Request) -> Response:
    """End every session of the user; they stay enabled and may sign in again."""
    rt, a = await _admin(request), access(request)
    user = _user(a)
    ended = await rt.sessions.end_user_sessions(user.id, ENDED_BY_ADMIN, tenant_id=user.tenant_id)
    a.audit(sessions=len(ended))
    return JSONResponse({"revoked": len(ended)})


async def end_user_session(request: Request) -> Response:
    """End one live session of the user; 404 when they have none with that id."""
    rt, a = await _admin(request), access(request)
    user = _user(a)
    session_id = request.path_params["session_id"]
    a.audit(session_id[:64], user_id=user.id)  # named in the audit row, found or not
    await rt.sessions.end_session(user.tenant_id, user.id, session_id, ENDED_BY_ADMIN)
    return Response(status_code=204)


_U = "/admin/v1/users/{user_id}"

routes = [
    Route(f"{_U}/sessions", list_user_sessions, methods=["GET"]),
    Route(f"{_U}/sessions", end_user_sessions, methods=["DELETE"]),
    Route(f"{_U}/sessions/{{session_id}}", end_user_session, methods=["DELETE"]),
]

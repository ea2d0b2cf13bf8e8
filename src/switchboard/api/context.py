"""How a route reaches the running process's resources and authenticates its caller."""

from __future__ import annotations

from starlette.requests import Request

from switchboard.auth.bearer import bearer_token
from switchboard.auth.keys import Caller
from switchboard.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def tenant_caller(request: Request, rt: Runtime) -> Caller:
    headers = request.headers
    token = bearer_token(headers.get("authorization"))
    return await rt.keys.authenticate(token, headers.get("x-tenant-id"))

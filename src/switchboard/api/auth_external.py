"""Sign-in through a tenant's identity provider, under /auth/v1.

* ``POST /auth/v1/ldap/login`` ``{"tenant", "provider"?, "username", "password"}`` → the same
  token pair as the password login.
* ``GET /auth/v1/oidc/{tenant}/{provider}/start[?return_to=/path&login_hint=...]`` → 302 to
  the provider, with the login's state sealed into a short-lived HttpOnly cookie.
* ``GET /auth/v1/oidc/{tenant}/{provider}/callback`` (the redirect URI to register at the
  provider) → checks the state, finishes the login, puts the token pair into a one-minute
  HttpOnly cookie readable only by the next route, and 303s to the return path on this origin.
* ``POST /auth/v1/oidc/session`` → that token pair as JSON, once; the cookie is cleared.
  Tokens never travel in a URL.
* ``GET /auth/v1/tenants/{tenant}/identity-providers`` → the enabled providers a login page
  may offer (names and kinds only).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from switchboard.api.callers import client_info
from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse, read_json
from switchboard.errors import AuthenticationFailed, InvalidRequest
from switchboard.runtime import Runtime

_BODY_LIMIT = 16 * 1024
_NO_STORE = {"cache-control": "no-store"}
STATE_COOKIE = "sb_oidc_state"
HANDOFF_COOKIE = "sb_oidc_session"
HANDOFF_PATH = "/auth/v1/oidc/session"
HANDOFF_TTL_SECONDS = 60


def public_base(request: Request, rt: Runtime) -> str:
    """This gateway's origin as browsers see it: the configured public URL, else the request's."""
    if rt.settings.public_url:
        return rt.settings.public_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


def _secure(base: str) -> bool:
    return base.startswith("https://")


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


async def ldap_login(request: Request) -> Response:
    rt = runtime(request)
    body = await read_json(request, _BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    tenant = _string(body, "tenant")
    username = _string(body, "username")
    password = body.get("password")
    if not isinstance(password, str):  # an empty one is refused by the login, as a failure
        raise InvalidRequest("'password' must be a string", param="password")
    assert tenant is not None
    assert username is not None
    pair = await rt.logins.ldap(
        tenant, _string(body, "provider", required=False), username, password, client_info(request)
    )
    return JSONResponse(pair.as_json(), headers=_NO_STORE)


async def oidc_start(request: Request) -> Response:
    rt = runtime(request)
    base = public_base(request, rt)
    url, sealed = await rt.logins.oidc_start(
        request.path_params["tenant"],
        request.path_params["provider"],
        base_url=base,
        return_to=request.query_params.get("return_to"),
        login_hint=request.query_params.get("login_hint"),
    )
    response = RedirectResponse(url, status_code=302, headers=_NO_STORE)
    response.set_cookie(
        STATE_COOKIE,
        sealed,
        max_age=600,
        path="/auth/v1/oidc/",
        httponly=True,
        secure=_secure(base),
        samesite="lax",  # sent on the provider's top-level redirect back to us
    )
    return response


async def oidc_callback(request: Request) -> Response:
    rt = runtime(request)
    base = public_base(request, rt)
    pair, return_path = await rt.logins.oidc_finish(
        request.path_params["tenant"],
        request.path_params["provider"],
        request.cookies.get(STATE_COOKIE),
        dict(request.query_params),
        client_info(request),
    )
    response = RedirectResponse(base + return_path, status_code=303, headers=_NO_STORE)
    response.delete_cookie(STATE_COOKIE, path="/auth/v1/oidc/")
    response.set_cookie(
        HANDOFF_COOKIE,
        rt.logins.box.encrypt(orjson.dumps(pair.as_json()).decode()),
        max_age=HANDOFF_TTL_SECONDS,
        path=HANDOFF_PATH,
        httponly=True,
        secure=_secure(base),
        samesite="strict",  # only our own pages can redeem it
    )
    return response


async def oidc_session(request: Request) -> Response:
    rt = runtime(request)
    sealed = request.cookies.get(HANDOFF_COOKIE, "")
    try:
        tokens = orjson.loads(rt.logins.box.decrypt(sealed, ttl=HANDOFF_TTL_SECONDS))
    except ValueError as exc:
        raise AuthenticationFailed(
            "no finished sign-in to collect in this browser", code="no_pending_session"
        ) from exc
    response = JSONResponse(tokens, headers=_NO_STORE)
    response.delete_cookie(HANDOFF_COOKIE, path=HANDOFF_PATH)
    return response


async def login_options(request: Request) -> Response:
    rt = runtime(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    data = [
        {
            "name": p.name,
            "kind": p.kind,
            "display_name": p.document.display_name or p.name,
            **(
                {"start_url": f"/auth/v1/oidc/{tenant.slug}/{p.name}/start"}
                if p.kind == "oidc"
                else {}
            ),
        }
        for p in await rt.logins.providers.list(tenant.id)
        if p.document.enabled
    ]
    return JSONResponse({"data": data})


routes = [
    Route("/auth/v1/ldap/login", ldap_login, methods=["POST"]),
    Route("/auth/v1/oidc/{tenant}/{provider}/start", oidc_start, methods=["GET"]),
    Route("/auth/v1/oidc/{tenant}/{provider}/callback", oidc_callback, methods=["GET"]),
    Route(HANDOFF_PATH, oidc_session, methods=["POST"]),
    Route("/auth/v1/tenants/{tenant}/identity-providers", login_options, methods=["GET"]),
]

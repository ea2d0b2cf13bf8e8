"""Admin API for a tenant's identity providers, under
``/admin/v1/tenants/{tenant}/identity-providers[/{name}]``: list, create, get, replace,
delete.

Allowed for platform admins (the admin key or a platform_admin session) and for the
tenant's own tenant admins, as `switchboard.api.admin_access` enforces; it also writes the
audit row of every change, done or denied. The provider's secret (``"secret"``: the LDAP
service-account password or the OIDC client secret) is write-only: it is stored encrypted
and the API only ever says whether one is set.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.admin_access import Access, access
from switchboard.api.auth_external import public_base
from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse, read_json, validated
from switchboard.auth.external_login import callback_path
from switchboard.auth.identity_providers import IdentityProvider, ProviderDocument
from switchboard.errors import InvalidRequest
from switchboard.runtime import Runtime
from switchboard.store.identity_providers import KEEP
from switchboard.store.tenants import Tenant

_BODY_LIMIT = 64 * 1024
_SECRET = "secret"  # noqa: S105 - the name of the write-only field


def _scope(request: Request) -> tuple[Runtime, Access, Tenant]:
    """The admin guard has checked the caller (tenant admin of this tenant, or platform
    admin) and resolved the tenant; it audits every change, done or denied."""
    a = access(request)
    assert a.tenant is not None
    return runtime(request), a, a.tenant


def _view(request: Request, rt: Runtime, tenant: Tenant, p: IdentityProvider) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id,
        "tenant_id": tenant.id,
        "name": p.name,
        "kind": p.kind,
        **p.document.model_dump(mode="json"),
        "secret_set": p.secret is not None,
    }
    if p.kind == "oidc":  # what to register at the provider
        out["redirect_uri"] = public_base(request, rt) + callback_path(tenant.slug, p.name)
    return out


async def _document(request: Request) -> tuple[dict[str, Any], ProviderDocument]:
    body = await read_json(request, _BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    fields = {k: v for k, v in body.items() if k not in ("name", _SECRET)}
    return body, validated(ProviderDocument, fields)


def _secret(body: dict[str, Any]) -> str | None:
    value = body.get(_SECRET)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidRequest("'secret' must be a non-empty string or null", param=_SECRET)
    return value


async def list_providers(request: Request) -> Response:
    rt, _, tenant = _scope(request)
    found = await rt.logins.providers.list(tenant.id)
    return JSONResponse({"data": [_view(request, rt, tenant, p) for p in found]})


async def create_provider(request: Request) -> Response:
    rt, a, tenant = _scope(request)
    body, document = await _document(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'name' is required", param="name")
    a.audit(target=name, kind=document.settings.kind, secret_given=_SECRET in body)
    created = await rt.logins.providers.create(tenant.id, name, document, _secret(body))
    return JSONResponse(_view(request, rt, tenant, created), status_code=201)


async def get_provider(request: Request) -> Response:
    rt, _, tenant = _scope(request)
    found = await rt.logins.providers.get(tenant.id, request.path_params["name"])
    return JSONResponse(_view(request, rt, tenant, found))


async def replace_provider(request: Request) -> Response:
    """Replace the document; the secret is kept unless the body sets it (or nulls it)."""
    rt, a, tenant = _scope(request)
    name = request.path_params["name"]
    body, document = await _document(request)
    secret = _secret(body) if _SECRET in body else KEEP
    a.audit(target=name, secret_changed=_SECRET in body)
    updated = await rt.logins.providers.update(tenant.id, name, document, secret)
    return JSONResponse(_view(request, rt, tenant, updated))


async def delete_provider(request: Request) -> Response:
    rt, a, tenant = _scope(request)
    name = request.path_params["name"]
    a.audit(target=name)
    await rt.logins.providers.delete(tenant.id, name)
    return Response(status_code=204)


_BASE = "/admin/v1/tenants/{tenant}/identity-providers"
routes = [
    Route(_BASE, list_providers, methods=["GET"]),
    Route(_BASE, create_provider, methods=["POST"]),
    Route(_BASE + "/{name}", get_provider, methods=["GET"]),
    Route(_BASE + "/{name}", replace_provider, methods=["PUT"]),
    Route(_BASE + "/{name}", delete_provider, methods=["DELETE"]),
]

"""The admin API under /admin/v1: tenants, keys, usage, models, doctor.

Every route is guarded by `switchboard.api.admin_access` (the platform admin key or a session,
the caller's role and scope); handlers narrow what they list to ``access.scope``. Errors use
OpenAI's error object, like /v1.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from switchboard.api.admin_access import Access, access
from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse, read_json, validated
from switchboard.auth import rbac
from switchboard.doctor import breaker_findings, diagnose, shared_state
from switchboard.errors import InvalidRequest
from switchboard.metering import report
from switchboard.policy.tenant_config import TenantConfig
from switchboard.runtime import Runtime
from switchboard.store.tenants import Tenant
from switchboard.store.users import User
from switchboard.views import plain

_BODY_LIMIT = 64 * 1024


async def _admin(request: Request) -> Runtime:
    """The runtime, for a request the access guard has let through (never otherwise)."""
    access(request)
    return runtime(request)


async def _object(request: Request) -> dict[str, Any]:
    body = await read_json(request, _BODY_LIMIT)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    return value


async def list_tenants(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    own = a.scope.tenant_id
    tenants = (
        await rt.platform.tenants.list() if own is None else [await rt.platform.tenants.get(own)]
    )
    return JSONResponse({"data": [plain(t) for t in tenants]})


async def create_tenant(request: Request) -> Response:
    rt = await _admin(request)
    body = await _object(request)
    slug = _optional_str(body, "slug")
    if not slug:
        raise InvalidRequest("'slug' is required", param="slug")
    tenant = await rt.platform.tenants.create(
        slug,
        name=_optional_str(body, "name"),
        usage_mode=_optional_str(body, "usage_mode") or "hybrid",
    )
    a = access(request)
    a.audit_tenant_id = tenant.id
    a.audit(tenant.id, slug=tenant.slug, usage_mode=tenant.usage_mode)
    return JSONResponse(plain(tenant), status_code=201)


def _tenant(request: Request) -> Tenant:
    tenant = access(request).tenant
    assert tenant is not None  # the rule's target is the tenant in the path
    return tenant


async def get_tenant(request: Request) -> Response:
    await _admin(request)
    return JSONResponse(plain(_tenant(request)))


async def update_tenant(request: Request) -> Response:
    rt = await _admin(request)
    body = await _object(request)
    tenant = await rt.platform.tenants.update(
        _tenant(request).id,
        name=_optional_str(body, "name"),
        usage_mode=_optional_str(body, "usage_mode"),
    )
    access(request).audit(fields=sorted(body))
    rt.keys.forget(tenant_id=tenant.id)
    return JSONResponse(plain(tenant))


def _config_document(tenant: Tenant, config: TenantConfig) -> dict[str, Any]:
    return {"tenant_id": tenant.slug, "usage_mode": tenant.usage_mode, **config.model_dump()}


async def get_tenant_config(request: Request) -> Response:
    rt = await _admin(request)
    tenant = _tenant(request)
    return JSONResponse(_config_document(tenant, await rt.platform.configs.get(tenant.id)))


async def put_tenant_config(request: Request) -> Response:
    """Replace the tenant's policy document (fields left out take their defaults)."""
    rt = await _admin(request)
    tenant = _tenant(request)
    body = await _object(request)
    access(request).audit(fields=sorted(body))
    named = body.pop("tenant_id", None)
    if named is not None and named not in (tenant.slug, tenant.id):
        raise InvalidRequest("tenant_id does not match the tenant in the path", param="tenant_id")
    usage_mode = body.pop("usage_mode", None)
    config = validated(TenantConfig, body)
    if usage_mode is not None:
        tenant = await rt.platform.tenants.update(tenant.id, usage_mode=str(usage_mode))
    await rt.platform.configs.put(tenant.id, config)
    rt.keys.forget(tenant_id=tenant.id)
    return JSONResponse(_config_document(tenant, config))


async def _key_owner(rt: Runtime, a: Access, tenant: Tenant, named: object) -> User | None:
    """The user a new key is for: the one named (e-mail or id), else the caller when they are
    below tenant admin, else nobody (a tenant service key)."""
    if named is None:
        if a.principal.at_least("tenant_admin"):
            return None
        named = a.principal.user_id
    if not isinstance(named, str) or not named:
        raise InvalidRequest("'user' must be a user's e-mail or id", param="user")
    users = rt.platform.users
    owner = (
        await users.get(tenant.id, named)
        if named.startswith("usr_")
        else await users.find_by_email(tenant.id, named)
    )
    if owner is None:
        raise InvalidRequest(f"no user {named!r} in this tenant", param="user")
    return owner


async def create_key(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    body = await _object(request)
    days = body.get("expires_in_days")
    if days is not None and (
        not isinstance(days, int | float) or isinstance(days, bool) or days <= 0
    ):
        raise InvalidRequest("'expires_in_days' must be a positive number", param="expires_in_days")
    tenant = _tenant(request)
    owner = await _key_owner(rt, a, tenant, body.get("user"))
    rbac.check_key_owner(a.principal, owner)
    key, secret = await rt.platform.keys.create(
        tenant,
        name=_optional_str(body, "name"),
        expires_in_days=days,
        user_id=owner.id if owner else None,
    )
    a.audit(key.id, name=key.name, user_id=key.user_id, expires_at=plain(key)["expires_at"])
    return JSONResponse({**plain(key), "key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    keys = await rt.platform.keys.list(
        _tenant(request).id, department_id=a.scope.department_id, user_id=a.scope.user_id
    )
    return JSONResponse({"data": [plain(k) for k in keys]})


async def revoke_key(request: Request) -> Response:
    rt, a = await _admin(request), access(request)
    assert a.key is not None
    key = await rt.platform.keys.revoke(a.key.id, tenant_id=a.key.tenant_id)
    a.audit(key.id, user_id=key.user_id)
    rt.keys.forget(key_id=key.id)
    return JSONResponse(plain(key))


async def tenant_usage(request: Request) -> Response:
    """The tenant's requests; a department admin's or a user's share only, for them."""
    rt, a = await _admin(request), access(request)
    tenant = _tenant(request)
    key_ids = None
    if a.scope.department_id is not None or a.scope.user_id is not None:
        scoped = await rt.platform.keys.list(
            tenant.id, department_id=a.scope.department_id, user_id=a.scope.user_id
        )
        key_ids = [k.id for k in scoped]
    params = request.query_params
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("'format' must be json or csv", param="format")
    limit_text = params.get("limit", "10000")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1_000_000:
        raise InvalidRequest("'limit' must be an integer from 1 to 1000000", param="limit")
    rows = await rt.platform.usage.query(
        tenant.id,
        since=report.parse_since(params.get("since")),
        limit=int(limit_text),
        key_ids=key_ids,
    )
    if fmt == "csv":
        return PlainTextResponse(report.as_csv(rows), media_type="text/csv")
    return Response(report.as_json(rows), media_type="application/json")


async def list_models(request: Request) -> Response:
    rt = await _admin(request)
    catalog = rt.gateway.catalog
    data = [
        {
            "name": name,
            "deployments": [
                {
                    "provider": d.provider.name,
                    "model": d.upstream_model,
                    "locality": d.locality,
                    "price": d.price.current.view() if d.price else None,
                }
                for d in catalog.deployments(name)
            ],
        }
        for name in catalog.names()
    ]
    return JSONResponse({"data": data})


def routing_state(rt: Runtime) -> list[dict[str, Any]]:
    """Every deployment with its breaker and load, as this worker sees them."""
    out = []
    for d in rt.gateway.catalog.all_deployments():
        view = d.health.breaker.view()
        out.append(
            {
                "model": d.model,
                "provider": d.provider.name,
                "deployment": d.upstream_model,
                "weight": d.weight,
                "in_flight": d.health.in_flight,
                "breaker": view.state,
                "consecutive_failures": view.consecutive_failures,
                "failure_rate": round(view.failure_rate, 3),
                "open_for_seconds": round(view.open_for_seconds, 1),
            }
        )
    return out


async def routing(request: Request) -> Response:
    rt = await _admin(request)
    return JSONResponse({"data": routing_state(rt)})


async def doctor(request: Request) -> Response:
    rt = await _admin(request)
    findings = await diagnose(rt.config, None, rt.platform.db)
    findings += [shared_state(rt.settings), *breaker_findings(routing_state(rt))]
    ok = all(f.level != "fail" for f in findings)
    return JSONResponse({"ok": ok, "findings": [plain(f) for f in findings]})


routes = [
    Route("/admin/v1/tenants", list_tenants, methods=["GET"]),
    Route("/admin/v1/tenants", create_tenant, methods=["POST"]),
    Route("/admin/v1/tenants/{tenant}", get_tenant, methods=["GET"]),
    Route("/admin/v1/tenants/{tenant}", update_tenant, methods=["PATCH"]),
    Route("/admin/v1/tenants/{tenant}/config", get_tenant_config, methods=["GET"]),
    Route("/admin/v1/tenants/{tenant}/config", put_tenant_config, methods=["PUT"]),
    Route("/admin/v1/tenants/{tenant}/keys", list_keys, methods=["GET"]),
    Route("/admin/v1/tenants/{tenant}/keys", create_key, methods=["POST"]),
    Route("/admin/v1/tenants/{tenant}/usage", tenant_usage, methods=["GET"]),
    Route("/admin/v1/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/v1/models", list_models, methods=["GET"]),
    Route("/admin/v1/routing", routing, methods=["GET"]),
    Route("/admin/v1/doctor", doctor, methods=["GET"]),
]

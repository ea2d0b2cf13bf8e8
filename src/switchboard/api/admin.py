"""The platform admin API under /admin/v1: tenants, keys, usage, models, doctor.

Authenticated with the platform admin key. Errors use OpenAI's error object, like /v1.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse, read_json
from switchboard.doctor import breaker_findings, diagnose
from switchboard.errors import InvalidRequest
from switchboard.metering import report
from switchboard.policy.tenant_config import TenantConfig
from switchboard.runtime import Runtime
from switchboard.store.tenants import Tenant
from switchboard.views import plain

_BODY_LIMIT = 64 * 1024


async def _admin(request: Request) -> Runtime:
    rt = runtime(request)
    await rt.admin.check(request.headers.get("authorization"))
    return rt


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
    rt = await _admin(request)
    return JSONResponse({"data": [plain(t) for t in await rt.platform.tenants.list()]})


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
    return JSONResponse(plain(tenant), status_code=201)


async def get_tenant(request: Request) -> Response:
    rt = await _admin(request)
    return JSONResponse(plain(await rt.platform.tenants.get(request.path_params["tenant"])))


async def update_tenant(request: Request) -> Response:
    rt = await _admin(request)
    body = await _object(request)
    tenant = await rt.platform.tenants.update(
        request.path_params["tenant"],
        name=_optional_str(body, "name"),
        usage_mode=_optional_str(body, "usage_mode"),
    )
    rt.keys.forget(tenant_id=tenant.id)
    return JSONResponse(plain(tenant))


def _config_document(tenant: Tenant, config: TenantConfig) -> dict[str, Any]:
    return {"tenant_id": tenant.slug, "usage_mode": tenant.usage_mode, **config.model_dump()}


async def get_tenant_config(request: Request) -> Response:
    rt = await _admin(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    return JSONResponse(_config_document(tenant, await rt.platform.configs.get(tenant.id)))


async def put_tenant_config(request: Request) -> Response:
    """Replace the tenant's policy document (fields left out take their defaults)."""
    rt = await _admin(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    body = await _object(request)
    named = body.pop("tenant_id", None)
    if named is not None and named not in (tenant.slug, tenant.id):
        raise InvalidRequest("tenant_id does not match the tenant in the path", param="tenant_id")
    usage_mode = body.pop("usage_mode", None)
    try:
        config = TenantConfig.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc
    if usage_mode is not None:
        tenant = await rt.platform.tenants.update(tenant.id, usage_mode=str(usage_mode))
    await rt.platform.configs.put(tenant.id, config)
    rt.keys.forget(tenant_id=tenant.id)
    return JSONResponse(_config_document(tenant, config))


async def create_key(request: Request) -> Response:
    rt = await _admin(request)
    body = await _object(request)
    days = body.get("expires_in_days")
    if days is not None and (
        not isinstance(days, int | float) or isinstance(days, bool) or days <= 0
    ):
        raise InvalidRequest("'expires_in_days' must be a positive number", param="expires_in_days")
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    key, secret = await rt.platform.keys.create(
        tenant, name=_optional_str(body, "name"), expires_in_days=days
    )
    return JSONResponse({**plain(key), "key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    rt = await _admin(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    return JSONResponse({"data": [plain(k) for k in await rt.platform.keys.list(tenant.id)]})


async def revoke_key(request: Request) -> Response:
    rt = await _admin(request)
    key = await rt.platform.keys.revoke(request.path_params["key_id"])
    rt.keys.forget(key_id=key.id)
    return JSONResponse(plain(key))


async def tenant_usage(request: Request) -> Response:
    rt = await _admin(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    params = request.query_params
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("'format' must be json or csv", param="format")
    limit_text = params.get("limit", "10000")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1_000_000:
        raise InvalidRequest("'limit' must be an integer from 1 to 1000000", param="limit")
    rows = await rt.platform.usage.query(
        tenant.id, since=report.parse_since(params.get("since")), limit=int(limit_text)
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
    findings += breaker_findings(routing_state(rt))
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

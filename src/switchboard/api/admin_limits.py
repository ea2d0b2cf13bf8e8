"""Per-key policies and budget standing under /admin/v1.

GET /admin/v1/keys/{key_id}/policy       the key's limits, budget and allowed models
PUT /admin/v1/keys/{key_id}/policy       replace them ({} clears every one)
GET /admin/v1/tenants/{tenant}/budget    this month's spend against the tenant's budget,
                                         and against each key budget of the tenant
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.admin import _admin, _object
from switchboard.api.admin_access import access
from switchboard.api.http import JSONResponse, validated
from switchboard.errors import InvalidRequest
from switchboard.limits.budgets import month_of
from switchboard.policy.limit_set import KeyPolicy
from switchboard.store.database import utcnow
from switchboard.store.keys import ApiKey
from switchboard.store.spend import monthly_spend


def _key(request: Request) -> ApiKey:
    """The key the access guard resolved (within the caller's scope)."""
    key = access(request).key
    assert key is not None  # the rule's target is "key"
    return key


async def get_key_policy(request: Request) -> Response:
    rt = await _admin(request)
    key = _key(request)
    policy = await rt.platform.key_policies.get(key.tenant_id, key.id)
    return JSONResponse({"key_id": key.id, **policy.model_dump()})


async def put_key_policy(request: Request) -> Response:
    rt = await _admin(request)
    key = _key(request)
    body = await _object(request)
    body.pop("key_id", None)
    policy = validated(KeyPolicy, body, "key policy")
    await rt.platform.key_policies.put(key.tenant_id, key.id, policy)
    access(request).audit(fields=sorted(policy.model_dump(exclude_defaults=True)))
    rt.keys.forget(key_id=key.id)
    return JSONResponse({"key_id": key.id, **policy.model_dump()})


async def tenant_budget(request: Request) -> Response:
    rt = await _admin(request)
    tenant = access(request).tenant
    assert tenant is not None  # the rule's target is "tenant"
    month = request.query_params.get("month") or month_of(utcnow())
    if len(month) != 7 or month[4] != "-" or not (month[:4] + month[5:]).isdigit():
        raise InvalidRequest("'month' must look like 2026-11", param="month")
    config = await rt.platform.configs.get(tenant.id)
    db = rt.platform.db
    keys: list[dict[str, Any]] = []
    for key in await rt.platform.keys.list(tenant.id):
        policy = await rt.platform.key_policies.get(tenant.id, key.id)
        if policy.monthly_budget_usd is not None:
            spent = await monthly_spend(db, tenant.id, month, key_id=key.id)
            keys.append(_standing(spent, policy.monthly_budget_usd) | {"key_id": key.id})
    spent = await monthly_spend(db, tenant.id, month)
    return JSONResponse(
        {
            "tenant_id": tenant.id,
            "month": month,
            **_standing(spent, config.monthly_budget_usd),
            "alert_percent": config.budget_alert_percent,
            "keys": keys,
        }
    )


def _standing(spent: float, budget: float | None) -> dict[str, Any]:
    return {
        "spent_usd": round(spent, 6),
        "budget_usd": budget,
        "remaining_usd": None if budget is None else round(max(0.0, budget - spent), 6),
        "percent": None if not budget else round(100 * spent / budget, 2),
    }


routes = [
    Route("/admin/v1/keys/{key_id}/policy", get_key_policy, methods=["GET"]),
    Route("/admin/v1/keys/{key_id}/policy", put_key_policy, methods=["PUT"]),
    Route("/admin/v1/tenants/{tenant}/budget", tenant_budget, methods=["GET"]),
]

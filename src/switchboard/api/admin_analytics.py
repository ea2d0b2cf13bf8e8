"""Usage analytics under /admin/v1/analytics: grouped usage, cost and latency, JSON or CSV.

The caller's scope is applied by one function: `principal_of` says who is calling (the
platform admin key, today), and `switchboard.metering.analytics.scope_for` turns that into the
part of the ledger the report may read. The RBAC layer plugs in by replacing `principal_of`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from switchboard.api.admin import _admin
from switchboard.api.context import runtime
from switchboard.auth.roles import ADMIN_KEY, Principal
from switchboard.errors import InvalidRequest
from switchboard.metering import analytics, report
from switchboard.metering.analytics import UsageQuery, scope_for
from switchboard.store.analytics import AnalyticsRepository


async def _admin_key(request: Request) -> Principal:
    await _admin(request)
    return ADMIN_KEY


principal_of: Callable[[Request], Awaitable[Principal]] = _admin_key


async def usage_analytics(request: Request) -> Response:
    principal = await principal_of(request)
    rt = runtime(request)
    params = request.query_params
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("'format' must be json or csv", param="format")
    tenant_id = None
    if params.get("tenant"):
        tenant_id = (await rt.platform.tenants.get(params["tenant"])).id
    query = UsageQuery(
        group_by=analytics.parse_group_by(params.get("group_by", "tenant")),
        since=report.parse_since(params.get("since")),
        until=report.parse_since(params.get("until"), "until"),
        tenant_id=tenant_id,
        model=params.get("model") or None,
    )
    rows = await AnalyticsRepository(rt.platform.db).summary(query, scope_for(principal))
    if fmt == "csv":
        return PlainTextResponse(analytics.as_csv(query, rows), media_type="text/csv")
    return Response(analytics.as_json(query, rows), media_type="application/json")


routes = [Route("/admin/v1/analytics", usage_analytics, methods=["GET"])]

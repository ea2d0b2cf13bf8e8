"""Usage analytics under /admin/v1/analytics: grouped usage, cost and latency, JSON or CSV.

The access guard (`switchboard.api.admin_access`) says who is calling (the platform admin key,
or a signed-in user), and one function, `switchboard.metering.analytics.scope_for`, turns the
caller's RBAC scope into the part of the ledger the report may read: everything, one tenant,
one department's keys, or one user's keys.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from switchboard.api.admin_access import access
from switchboard.api.context import runtime
from switchboard.errors import InvalidRequest, PermissionDenied
from switchboard.metering import analytics, report
from switchboard.metering.analytics import UsageQuery, scope_for
from switchboard.store.analytics import AnalyticsRepository


async def usage_analytics(request: Request) -> Response:
    rt = runtime(request)
    scope = scope_for(access(request).principal)
    params = request.query_params
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("'format' must be json or csv", param="format")
    tenant_id = None
    if params.get("tenant"):
        if scope.tenant_id is not None:  # never say whether another tenant exists
            own = await rt.platform.tenants.get(scope.tenant_id)
            if params["tenant"] not in (own.id, own.slug):
                raise PermissionDenied("you may only report on your own tenant", param="tenant")
        tenant_id = (await rt.platform.tenants.get(params["tenant"])).id
    query = UsageQuery(
        group_by=analytics.parse_group_by(params.get("group_by", "tenant")),
        since=report.parse_since(params.get("since")),
        until=report.parse_since(params.get("until"), "until"),
        tenant_id=tenant_id,
        model=params.get("model") or None,
    )
    rows = await AnalyticsRepository(rt.platform.db).summary(query, scope)
    if fmt == "csv":
        return PlainTextResponse(analytics.as_csv(query, rows), media_type="text/csv")
    return Response(analytics.as_json(query, rows), media_type="application/json")


routes = [Route("/admin/v1/analytics", usage_analytics, methods=["GET"])]

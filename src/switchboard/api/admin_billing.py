"""Billing under /admin/v1: tenant plans, effective prices, and the Lago export (backlog,
dead letters, re-drive).

The export queue fills from the usage ledger whether or not Lago is configured, so these
routes always answer; ``exporting`` says whether this worker runs the exporter itself.
Authenticated with the platform admin key, like the rest of /admin/v1.
"""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from switchboard.api.admin import _admin, _object
from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse, validated
from switchboard.errors import InvalidRequest
from switchboard.metering.billing import PlanTerms
from switchboard.metering.export_ops import backlog_view, dead_letter_view
from switchboard.metering.invoice import invoice_for, render_html
from switchboard.metering.quotes import effective_prices

_MAX_DEAD = 1000


async def export_status(request: Request) -> Response:
    rt = await _admin(request)
    backlog = await rt.export.backlog()
    return JSONResponse(
        {
            **backlog_view(backlog),
            "lago_configured": bool(rt.settings.lago_url),
            "exporting": rt.export_task is not None and not rt.export_task.done(),
        }
    )


async def dead_letters(request: Request) -> Response:
    rt = await _admin(request)
    limit_text = request.query_params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_DEAD:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {_MAX_DEAD}", param="limit")
    letters = await rt.export.dead_letters(limit=int(limit_text))
    return JSONResponse({"data": [dead_letter_view(letter) for letter in letters]})


async def redrive(request: Request) -> Response:
    """Dead letters back to pending: the ones named in ``request_ids``, or all of them."""
    rt = await _admin(request)
    request_ids: list[str] | None = None
    if _has_body(request):
        named = (await _object(request)).get("request_ids")
        if named is not None:
            if not isinstance(named, list) or not all(isinstance(r, str) for r in named):
                raise InvalidRequest(
                    "'request_ids' must be a list of request ids", param="request_ids"
                )
            request_ids = named
    return JSONResponse({"requeued": await rt.export.redrive(request_ids)})


def _has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


async def get_plan(request: Request) -> Response:
    """The plan in force now, and every version (oldest first)."""
    rt = await _admin(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    current = await rt.platform.plans.at(tenant.id)
    history = await rt.platform.plans.history(tenant.id)
    return JSONResponse({**current.view(), "history": [v.view() for v in history]})


async def put_plan(request: Request) -> Response:
    """A new plan version: the terms (all of them; what is left out takes its default), in
    force from ``effective_from`` (an ISO 8601 time with offset, now or later; default now)."""
    rt = await _admin(request)
    tenant = await rt.platform.tenants.get(request.path_params["tenant"])
    body = await _object(request)
    start = body.pop("effective_from", None)
    effective_from = None
    if start is not None:
        try:
            effective_from = datetime.fromisoformat(str(start))
        except ValueError as exc:
            raise InvalidRequest(
                "'effective_from' must be an ISO 8601 time", param="effective_from"
            ) from exc
    terms = validated(PlanTerms, body, "plan")
    version = await rt.platform.plans.put(tenant.id, terms, effective_from=effective_from)
    return JSONResponse(version.view())


async def prices(request: Request) -> Response:
    """Effective prices of the configured models (``model``), billed for ``tenant`` if given."""
    rt = await _admin(request)
    params = request.query_params
    plan = None
    if params.get("tenant"):
        tenant = await rt.platform.tenants.get(params["tenant"])
        plan = await rt.platform.plans.at(tenant.id)
    rows = effective_prices(rt.config, model=params.get("model") or None, plan=plan)
    return JSONResponse({"data": rows})


async def invoice(request: Request) -> Response:
    """The invoice preview of a month: JSON, or a printable page with ``format=html``."""
    await _admin(request)
    params = request.query_params
    fmt = params.get("format", "json")
    if fmt not in ("json", "html"):
        raise InvalidRequest("'format' must be json or html", param="format")
    rt = runtime(request)
    found = await invoice_for(rt.platform, request.path_params["tenant"], params.get("month", ""))
    if fmt == "html":
        return HTMLResponse(render_html(found))
    return JSONResponse(found)


routes = [
    Route("/admin/v1/tenants/{tenant}/invoice", invoice, methods=["GET"]),
    Route("/admin/v1/tenants/{tenant}/plan", get_plan, methods=["GET"]),
    Route("/admin/v1/tenants/{tenant}/plan", put_plan, methods=["PUT"]),
    Route("/admin/v1/prices", prices, methods=["GET"]),
    Route("/admin/v1/export", export_status, methods=["GET"]),
    Route("/admin/v1/export/dead", dead_letters, methods=["GET"]),
    Route("/admin/v1/export/redrive", redrive, methods=["POST"]),
]

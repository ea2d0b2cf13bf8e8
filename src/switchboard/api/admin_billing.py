"""The billing export under /admin/v1/export: backlog, dead letters, re-drive.

The export queue fills from the usage ledger whether or not Lago is configured, so these
routes always answer; ``exporting`` says whether this worker runs the exporter itself.
Authenticated with the platform admin key, like the rest of /admin/v1.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.admin import _admin, _object
from switchboard.api.http import JSONResponse
from switchboard.errors import InvalidRequest
from switchboard.metering.export_ops import backlog_view, dead_letter_view

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


routes = [
    Route("/admin/v1/export", export_status, methods=["GET"]),
    Route("/admin/v1/export/dead", dead_letters, methods=["GET"]),
    Route("/admin/v1/export/redrive", redrive, methods=["POST"]),
]

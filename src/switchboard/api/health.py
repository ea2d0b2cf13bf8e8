"""Liveness and readiness probes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.api.context import runtime
from switchboard.api.http import JSONResponse


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = getattr(request.app.state, "runtime", None)
    checks: dict[str, str] = {"config": "ok" if state is not None else "not loaded"}
    if state is None:
        checks["database"] = "not connected"
    else:
        try:
            await runtime(request).platform.db.ping()
            checks["database"] = "ok"
        except Exception as exc:  # whatever the driver raises, the probe reports it
            checks["database"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]

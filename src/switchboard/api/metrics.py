"""``GET /metrics``: Prometheus text format, for this worker.

Counters and histograms come from the usage events this worker recorded; gauges are read now:
the Lago export backlog and lag (from the database), the usage events buffered in this worker,
and each deployment's requests in flight and circuit breaker. With
``SWITCHBOARD_METRICS_TOKEN`` set, scrapes must send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from switchboard.api.context import runtime
from switchboard.auth.bearer import bearer_token
from switchboard.errors import AuthenticationFailed
from switchboard.observability.metrics import Gauge, Labels
from switchboard.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    rt = runtime(request)
    token = rt.settings.metrics_token
    if token is not None:
        given = bearer_token(request.headers.get("authorization"))
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise AuthenticationFailed("invalid metrics token")
    text = rt.gateway.metrics.render(await gauges(rt))
    return PlainTextResponse(text, headers={"content-type": CONTENT_TYPE})


async def gauges(rt: Runtime) -> list[Gauge]:
    backlog = await rt.export.backlog()
    lag = 0.0
    if backlog.oldest_pending_at is not None:
        lag = max(0.0, time.time() - backlog.oldest_pending_at.timestamp())
    deployment = ("model", "provider", "deployment")
    in_flight: dict[Labels, float] = {}
    breaker_open: dict[Labels, float] = {}
    for d in rt.gateway.catalog.all_deployments():
        labels = (d.model, d.provider.name, d.upstream_model)
        in_flight[labels] = float(d.health.in_flight)
        breaker_open[labels] = 0.0 if d.health.breaker.view().state == "closed" else 1.0
    return [
        Gauge("switchboard_export_pending_events", "Usage events not yet in Lago.",
              _one(float(backlog.pending))),
        Gauge("switchboard_export_dead_events", "Usage events Lago refused (dead letters).",
              _one(float(backlog.dead))),
        Gauge("switchboard_export_lag_seconds", "Age of the oldest usage event not yet in Lago.",
              _one(lag)),
        Gauge("switchboard_usage_buffer_events",
              "Usage events this worker holds, not yet written to the database.",
              _one(float(rt.recorder.pending))),
        Gauge("switchboard_usage_events_dropped",
              "Usage events this worker dropped because its buffer was full (database down).",
              _one(float(rt.recorder.dropped))),
        Gauge("switchboard_upstream_in_flight", "Requests in flight per deployment.",
              in_flight, deployment),
        Gauge("switchboard_breaker_open", "1 while a deployment's circuit breaker is not closed.",
              breaker_open, deployment),
    ]  # fmt: skip


def _one(value: float) -> dict[Labels, float]:
    return {(): value}


routes = [Route("/metrics", metrics, methods=["GET"])]

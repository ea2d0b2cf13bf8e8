"""Prometheus metrics: the text format (checked by prometheus_client's own parser), what the
usage events feed, the gauges read at scrape time, and the optional scrape token."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RunningGateway, gateway_config, start_gateway
from fakes.server import ServerThread
from switchboard.metering.usage import UsageEvent
from switchboard.observability.metrics import Gauge, Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "worker"))
            out[(sample.name, labels)] = sample.value
    return out


def event(**fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": "r",
        "tenant_id": "t1",
        "key_id": "k1",
        "created_at": datetime.now(UTC),
        "endpoint": "chat",
        "model": "gpt",
        "provider": "openai",
        "tokens_input": 10,
        "tokens_output": 5,
        "cost_usd": 0.25,
        "latency_ms": 120,
    }
    return UsageEvent(**{**values, **fields})


def test_events_feed_counters_and_histograms() -> None:
    metrics = Metrics(known_model=lambda m: m == "gpt")
    metrics.observe(event())
    metrics.observe(event(stream=True, ttft_ms=30, latency_ms=900))
    metrics.observe(event(status=502, tokens_input=0, tokens_output=0, cost_usd=0.0))
    nothing = {"provider": None, "tokens_input": 0, "tokens_output": 0, "cost_usd": 0.0}
    metrics.observe(event(**nothing, refusal_reason='Say "no"'))
    metrics.observe(
        event(**nothing, status=429, error="Monthly budget ...", error_code="budget_exceeded")
    )
    metrics.observe(event(**nothing, status=404, model="gpt-typo-123"))
    metrics.observe(event(provider=None, cached=True, cost_usd=0.0))
    backlog: dict[tuple[str, ...], float] = {(): 3.0}
    got = samples(metrics.render([Gauge("x_backlog", "Backlog.", backlog)]))
    ok = {"tenant": "t1", "model": "gpt", "provider": "openai"}
    assert got[at("switchboard_requests_total", **ok, status="2xx")] == 2
    assert got[at("switchboard_requests_total", **ok, status="5xx")] == 1
    typo = at(
        "switchboard_requests_total", tenant="t1", model="(unknown)", provider="", status="4xx"
    )
    assert got[typo] == 1  # typos do not make new series
    tokens = at("switchboard_tokens_total", tenant="t1", model="gpt", direction="input")
    assert got[tokens] == 30  # two served and the cache hit
    assert got[at("switchboard_cost_usd_total", tenant="t1", model="gpt")] == 0.5
    assert got[at("switchboard_refusals_total", tenant="t1", reason='Say "no"')] == 1
    assert got[at("switchboard_limited_total", tenant="t1", code="budget_exceeded")] == 1
    assert got[at("switchboard_cache_hits_total", tenant="t1")] == 1
    latency = {"model": "gpt", "provider": "openai"}
    assert got[at("switchboard_request_duration_seconds_count", **latency)] == 3
    assert got[at("switchboard_request_duration_seconds_bucket", **latency, le="0.25")] == 2
    assert got[at("switchboard_request_duration_seconds_bucket", **latency, le="+Inf")] == 3
    assert got[at("switchboard_time_to_first_token_seconds_count", **latency)] == 1
    assert got[at("x_backlog")] == 3


def at(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


@pytest.mark.slow
def test_the_gateway_serves_metrics(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("metrics")
    tenant_id = gateway.admin("GET", f"/admin/v1/tenants/{gateway.keys['metrics:slug']}").json()[
        "id"
    ]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hello"}]
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hello"}]
            )
        slug = gateway.keys["metrics:slug"]
        zero = {"monthly_budget_usd": 0}
        assert gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=zero).is_success
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="gpt-fake", messages=[{"role": "user", "content": "hello"}]
            )
    response = httpx.get(gateway.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    requests = "switchboard_requests_total"
    ok = at(requests, tenant=tenant_id, model="gpt-fake", provider="openai-fake", status="2xx")
    assert got[ok] == 1
    missing = at(requests, tenant=tenant_id, model="(unknown)", provider="", status="4xx")
    assert got[missing] == 1
    refused = at("switchboard_limited_total", tenant=tenant_id, code="budget_exceeded")
    assert got[refused] == 1
    for name in ("switchboard_export_pending_events", "switchboard_export_lag_seconds",
                 "switchboard_usage_buffer_events"):  # fmt: skip
        assert at(name) in got
    flight = "switchboard_upstream_in_flight"
    assert at(flight, model="gpt-fake", provider="openai-fake", deployment="gpt-4o-mini") in got


@pytest.mark.slow
def test_a_metrics_token_guards_the_scrape(
    tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    config = gateway_config(fake_openai.url, fake_ollama.url)
    server, _ = start_gateway(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", config, metrics_token="scrape-me"
    )
    with server:
        assert httpx.get(server.url + "/metrics").status_code == 401
        wrong = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert right.status_code == 200
        assert "switchboard_requests_total" in right.text

"""Prometheus metrics: counters and histograms fed by every recorded usage event, and gauges
read at scrape time (export backlog and lag, usage buffer, upstreams in flight, breakers).

    Gateway.finish(event) ──▶ Metrics.observe(event)       a few dict updates per request
    GET /metrics ──▶ Metrics.render(gauges)                Prometheus text format 0.0.4

No client library: the hot path is a handful of dictionary increments keyed by label tuples,
and rendering happens only when scraped. Each worker process counts its own requests; every
series carries a ``worker`` label (the process id) so that series from several workers behind
one port do not overwrite each other. Run one worker per pod/replica where possible.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from switchboard.metering.usage import UsageEvent

# Request latency buckets, seconds: from a cache hit to a long generation.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Gauge:
    """A metric's samples by label values (a gauge read at scrape time, or a counter)."""

    name: str
    help: str
    samples: Mapping[Labels, float] | Mapping[Labels, int]
    label_names: Labels = ()


class _Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.count += 1
        self.total += value


class Metrics:
    """``known_model`` keeps the ``model`` label bounded: a name that is not a configured model
    (a client's typo, a probe) is counted as ``(unknown)``."""

    def __init__(self, known_model: Callable[[str], bool] = lambda _: True) -> None:
        self.worker = str(os.getpid())
        self._known = known_model
        # (tenant, model, provider, status class) -> requests
        self.requests: dict[Labels, int] = {}
        # (tenant, model, direction) -> tokens
        self.tokens: dict[Labels, int] = {}
        # (tenant, model) -> USD
        self.cost: dict[Labels, float] = {}
        # (tenant, reason) -> refusals by guardrails
        self.refusals: dict[Labels, int] = {}
        # (tenant, code) -> requests refused by our own limits and budgets
        self.limited: dict[Labels, int] = {}
        # (tenant,) -> cache hits
        self.cache_hits: dict[Labels, int] = {}
        # (model, provider) -> latency histogram; time to first token for streams
        self.latency: dict[Labels, _Histogram] = {}
        self.ttft: dict[Labels, _Histogram] = {}

    def observe(self, event: UsageEvent) -> None:
        provider = event.provider or ""
        model = event.model if provider or self._known(event.model) else "(unknown)"
        tenant = event.tenant_id
        status = event.status
        key = (tenant, model, provider, f"{status // 100}xx")
        self.requests[key] = self.requests.get(key, 0) + 1
        if event.tokens_input or event.tokens_output:
            for direction, count in (
                ("input", event.tokens_input),
                ("output", event.tokens_output),
            ):
                tkey = (tenant, model, direction)
                self.tokens[tkey] = self.tokens.get(tkey, 0) + count
        if event.cost_usd:
            ckey = (tenant, model)
            self.cost[ckey] = self.cost.get(ckey, 0.0) + event.cost_usd
        if event.refusal_reason:
            rkey = (tenant, event.refusal_reason)
            self.refusals[rkey] = self.refusals.get(rkey, 0) + 1
        if status == 429 and not provider:  # refused before any upstream: our own limits
            lkey = (tenant, event.error_code or "rate_limit_exceeded")
            self.limited[lkey] = self.limited.get(lkey, 0) + 1
        if event.cached:
            self.cache_hits[(tenant,)] = self.cache_hits.get((tenant,), 0) + 1
        if provider:
            hkey = (model, provider)
            hist = self.latency.get(hkey) or self.latency.setdefault(hkey, _Histogram())
            hist.observe(event.latency_ms / 1000)
            if event.stream and event.ttft_ms is not None:
                first = self.ttft.get(hkey) or self.ttft.setdefault(hkey, _Histogram())
                first.observe(event.ttft_ms / 1000)

    def render(self, gauges: Iterable[Gauge] = ()) -> str:
        counters = [
            Gauge("switchboard_requests_total", "Requests by tenant, model, provider and status.",
                  self.requests, ("tenant", "model", "provider", "status")),
            Gauge("switchboard_tokens_total", "Tokens metered, by direction.",
                  self.tokens, ("tenant", "model", "direction")),
            Gauge("switchboard_cost_usd_total", "Provider cost in USD.",
                  self.cost, ("tenant", "model")),
            Gauge("switchboard_refusals_total", "Requests refused by guardrails, by reason.",
                  self.refusals, ("tenant", "reason")),
            Gauge("switchboard_limited_total",
                  "Requests refused by Switchboard's own rate, concurrency and budget limits.",
                  self.limited, ("tenant", "code")),
            Gauge("switchboard_cache_hits_total", "Answers served from the response cache.",
                  self.cache_hits, ("tenant",)),
        ]  # fmt: skip
        out: list[str] = []
        for counter in counters:
            _samples(out, counter, "counter", self.worker)
        _histogram(out, "switchboard_request_duration_seconds",
                   "Request latency through the gateway, upstream included.",
                   self.latency, self.worker)  # fmt: skip
        _histogram(out, "switchboard_time_to_first_token_seconds",
                   "Time to the first streamed chunk.", self.ttft, self.worker)  # fmt: skip
        for gauge in gauges:
            _samples(out, gauge, "gauge", self.worker)
        return "\n".join(out) + "\n"


def _samples(out: list[str], metric: Gauge, kind: str, worker: str) -> None:
    out.append(f"# HELP {metric.name} {metric.help}")
    out.append(f"# TYPE {metric.name} {kind}")
    for labels, value in sorted(metric.samples.items()):
        pairs = [*zip(metric.label_names, labels, strict=True), ("worker", worker)]
        out.append(f"{metric.name}{_labels(pairs)} {_number(value)}")


def _histogram(
    out: list[str], name: str, help_text: str, values: Mapping[Labels, _Histogram], worker: str
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    for (model, provider), hist in sorted(values.items()):
        base = [("model", model), ("provider", provider), ("worker", worker)]
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            out.append(f"{name}_bucket{_labels([*base, ('le', le)])} {running}")
        out.append(f"{name}_sum{_labels(base)} {_number(hist.total)}")
        out.append(f"{name}_count{_labels(base)} {hist.count}")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))

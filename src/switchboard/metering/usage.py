"""The usage event: one per client request, whatever became of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class UsageEvent:
    """What one request used and cost. Filled in as the request goes; recorded once at its end.

    ``status`` is the HTTP status the client saw (499 when the client went away first);
    ``tokens_estimated`` says the counts were made by counting streamed chunks because the
    upstream reported none. ``cost_usd`` and ``price_version`` are set on the request path
    (`switchboard.metering.charging`); ``billed_amount``, ``currency`` and ``plan_version`` by
    the ledger writer from the tenant's plan (`switchboard.metering.billing`).
    """

    request_id: str
    tenant_id: str
    key_id: str | None
    created_at: datetime
    endpoint: str
    model: str = ""
    user_id: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    tokens_input: int = 0
    tokens_output: int = 0
    tokens_estimated: bool = False
    tokens_cached_input: int = 0  # of tokens_input: read from the provider's prompt cache
    tokens_cache_write: int = 0  # of tokens_input: written to the provider's prompt cache
    cost_usd: float = 0.0  # what it cost the platform (provider prices, USD)
    price_version: str | None = None  # the price book version cost_usd was computed with
    billed_amount: float = 0.0  # what the tenant is billed, in `currency` (plan applied)
    currency: str = "USD"
    plan_version: int | None = None  # the tenant plan version billed_amount came from
    latency_ms: int = 0
    ttft_ms: int | None = None
    status: int = 200
    error: str | None = None
    attempts: int = 0
    route: str | None = None
    refusal_reason: str | None = None
    cached: bool = False
    started: float = field(default=0.0, repr=False)
    # In flight only, never stored: response headers from the limits step, what the limits
    # step holds for the request (reservations, leases) until the event is recorded, and the
    # machine-readable code of the error the gateway itself raised (for the metrics).
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)
    admission: Any = field(default=None, repr=False)
    error_code: str | None = field(default=None, repr=False)

    def as_row(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "endpoint": self.endpoint,
            "model": self.model,
            "provider": self.provider,
            "upstream_model": self.upstream_model,
            "stream": self.stream,
            "tokens_input": self.tokens_input,
            "tokens_output": self.tokens_output,
            "tokens_estimated": self.tokens_estimated,
            "tokens_cached_input": self.tokens_cached_input,
            "tokens_cache_write": self.tokens_cache_write,
            "cost_usd": self.cost_usd,
            "price_version": self.price_version,
            "billed_amount": self.billed_amount,
            "currency": self.currency,
            "plan_version": self.plan_version,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "route": self.route,
            "refusal_reason": self.refusal_reason,
            "cached": self.cached,
        }

"""What one request cost the platform: tokens (with prompt-cache reads and writes) at the
price version in force at the request's time.

The gateway calls `charge` once per request when the tokens are known; `switchboard usage
reconcile` calls `provider_cost` on the stored row to check it. Both price the same fields the
same way, so a ledger row always reconciles with the price book of its day.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from switchboard.config import Price
from switchboard.metering.prices import PriceHistory, cost_usd
from switchboard.metering.usage import UsageEvent

EMBEDDING_ENDPOINTS = frozenset({"embeddings", "ollama.embed"})


def cache_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(cache reads, cache writes) from OpenAI-shaped usage: ``prompt_tokens_details``
    ``cached_tokens`` (OpenAI, and what the Anthropic and Bedrock adapters map cache reads to)
    and ``cache_write_tokens`` (the adapters' cache creation tokens)."""
    details = (usage or {}).get("prompt_tokens_details")
    if not isinstance(details, Mapping):
        return 0, 0
    return _int(details.get("cached_tokens")), _int(details.get("cache_write_tokens"))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def provider_cost(price: Price, row: Mapping[str, Any] | UsageEvent) -> float:
    """The cost of a usage event (or ledger row) at ``price``; a cache hit costs nothing."""

    def get(name: str) -> Any:
        return row[name] if isinstance(row, Mapping) else getattr(row, name)

    if get("cached"):
        return 0.0
    return cost_usd(
        price,
        int(get("tokens_input")),
        int(get("tokens_output")),
        cached_input=int(get("tokens_cached_input") or 0),
        cache_write=int(get("tokens_cache_write") or 0),
        embedding=get("endpoint") in EMBEDDING_ENDPOINTS,
    )


def charge(
    event: UsageEvent,
    prices: PriceHistory | None,
    tokens_input: int,
    tokens_output: int,
    usage: Mapping[str, Any] | None = None,
) -> None:
    """Record the tokens of ``event`` and what they cost at the version of its time."""
    event.tokens_input, event.tokens_output = tokens_input, tokens_output
    event.tokens_cached_input, event.tokens_cache_write = cache_tokens(usage)
    if prices is None:  # an external model with no price: flagged by doctor, costs 0
        return
    version = prices.at(event.created_at)
    event.price_version = version.id
    event.cost_usd = provider_cost(version.price, event)

"""Tenant plans: what a tenant is billed for what its requests cost the platform.

A plan has a currency (with the exchange rate from USD), a markup percentage over the provider
cost, fixed prices per model name that replace the markup for those models, and a monthly
allowance: an amount of billed usage included each calendar month before anything is charged.
The allowance applies to the month's total (invoice, Lago plan), never to single events.

Plans are versioned like prices: setting a plan adds a version in force from a given time (now
by default), and each usage event is billed by the version in force at its request time. The
ledger writer (`BillingSink`) sets ``billed_amount``, ``currency`` and ``plan_version`` on each
batch of events before it is written, so plans never sit on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchboard.config import Price
from switchboard.metering.charging import provider_cost
from switchboard.metering.recorder import UsageSink
from switchboard.metering.usage import UsageEvent


class PlanTerms(BaseModel):
    """The terms of one plan version (the body of ``PUT /admin/v1/tenants/{t}/plan``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    exchange_rate: float = Field(
        default=1.0, gt=0, description="Units of `currency` per USD of provider cost."
    )
    markup_percent: float = Field(
        default=0.0, ge=-100, le=10_000, description="Added to the provider cost (-100..10000)."
    )
    model_prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Fixed prices per model name, in `currency` per 1M tokens (no markup).",
    )
    included_allowance: float = Field(
        default=0.0, ge=0, description="Billed amount included each month, in `currency`."
    )
    cache_hit_per_1m: float = Field(
        default=0.0,
        ge=0,
        description="What an answer from the response cache is billed, in `currency` per 1M "
        "of its tokens (prompt and completion); 0 by default: hits are free.",
    )

    @model_validator(mode="after")
    def _usd_is_usd(self) -> PlanTerms:
        if self.currency == "USD" and self.exchange_rate != 1.0:
            raise ValueError("a USD plan has exchange_rate 1")
        return self


DEFAULT_TERMS = PlanTerms()


@dataclass(frozen=True, slots=True)
class PlanVersion:
    """One version of a tenant's plan; ``id`` None is the default plan (cost, in USD)."""

    id: int | None
    tenant_id: str
    effective_from: datetime | None
    terms: PlanTerms

    def view(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "version": self.id,
            "effective_from": self.effective_from.isoformat() if self.effective_from else None,
            **self.terms.model_dump(mode="json", exclude_none=True),
        }


def default_plan(tenant_id: str) -> PlanVersion:
    return PlanVersion(None, tenant_id, None, DEFAULT_TERMS)


def plan_at(history: Sequence[PlanVersion], tenant_id: str, when: datetime) -> PlanVersion:
    """The version in force at ``when`` (``history`` oldest first); the default plan before
    the first version."""
    chosen = default_plan(tenant_id)
    for version in history:
        if version.effective_from is not None and version.effective_from <= when:
            chosen = version
    return chosen


def billed_amount(terms: PlanTerms, row: Mapping[str, Any] | UsageEvent) -> float:
    """What the tenant is billed for one event (before the monthly allowance). A cache hit
    costs the platform nothing and is billed at the plan's own cache-hit price."""
    if row["cached"] if isinstance(row, Mapping) else row.cached:
        tokens = (
            int(row["tokens_input"]) + int(row["tokens_output"])
            if isinstance(row, Mapping)
            else row.tokens_input + row.tokens_output
        )
        return tokens * terms.cache_hit_per_1m / 1_000_000
    model = row["model"] if isinstance(row, Mapping) else row.model
    fixed = terms.model_prices.get(str(model))
    if fixed is not None:
        return provider_cost(fixed, row)
    cost = row["cost_usd"] if isinstance(row, Mapping) else row.cost_usd
    return float(cost) * (1 + terms.markup_percent / 100) * terms.exchange_rate


def bill(event: UsageEvent, plan: PlanVersion) -> None:
    event.billed_amount = billed_amount(plan.terms, event)
    event.currency = plan.terms.currency
    event.plan_version = plan.id


class PlanSource(Protocol):
    async def histories(self, tenant_ids: Sequence[str]) -> dict[str, list[PlanVersion]]: ...


class BillingSink:
    """The recorder's sink: bills each batch by the plans in force, then writes it."""

    def __init__(self, ledger: UsageSink, plans: PlanSource) -> None:
        self._ledger = ledger
        self._plans = plans

    async def write(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        histories = await self._plans.histories(sorted({e.tenant_id for e in events}))
        for event in events:
            bill(
                event,
                plan_at(histories.get(event.tenant_id, ()), event.tenant_id, event.created_at),
            )
        await self._ledger.write(events)

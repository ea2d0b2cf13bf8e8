"""`switchboard usage reconcile`: recompute a tenant's month from the price book and plans.

For every ledger row of the month, the provider cost is computed again from the tokens on the
row and the price version in force at the row's time, found independently of the gateway that
wrote it: the deployment that served (provider and upstream model) is looked up in the gateway
config (`ConfigPrices`), with the same precedence the gateway uses (deployment price, then the
config's ``prices:``, then the shipped book; local models free unless priced). The billed
amount is computed again from the plan version in force at the row's time. Any row whose
recorded cost, billed amount, currency, price version or plan version differs is reported.

A row without a price version was never charged (the request failed before any output) and
must have cost 0, which the cost check verifies.

Zero differences means: every row was priced by the book and plan of its day, and nothing was
changed after it was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from switchboard.config import GatewayConfig, Price
from switchboard.metering.billing import PlanVersion, billed_amount, plan_at
from switchboard.metering.charging import provider_cost
from switchboard.metering.invoice import month_bounds
from switchboard.metering.prices import PriceHistory, PriceTable
from switchboard.platform import Platform
from switchboard.store.database import as_utc
from switchboard.store.schema import usage_events

_EXAMPLES = 50


class ConfigPrices:
    """The price history of a (provider, upstream model) the way the gateway resolved it."""

    def __init__(self, config: GatewayConfig) -> None:
        self._table = PriceTable(config.prices)
        self._locality = {p.name: p.locality for p in config.providers}
        self._configured: dict[tuple[str, str], list[tuple[str, Price | None]]] = {}
        for route in config.models:
            for d in route.deployments:
                key = (d.provider, d.model)
                self._configured.setdefault(key, []).append((route.name, d.price))

    def history(self, model: str, provider: str, upstream: str) -> PriceHistory | None:
        locality = self._locality.get(provider, "external")
        candidates = self._configured.get((provider, upstream))
        configured = None
        if candidates:
            named = [price for name, price in candidates if name == model]
            configured = named[0] if named else candidates[0][1]
        return self._table.resolve(upstream, locality=locality, configured=configured)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 + 1e-9 * max(abs(a), abs(b))


@dataclass
class Reconciliation:
    tenant_id: str
    month: str
    events: int = 0
    recorded_cost_usd: float = 0.0
    recomputed_cost_usd: float = 0.0
    recorded_billed: float = 0.0
    recomputed_billed: float = 0.0
    differences: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "month": self.month,
            "events": self.events,
            "recorded_cost_usd": round(self.recorded_cost_usd, 9),
            "recomputed_cost_usd": round(self.recomputed_cost_usd, 9),
            "recorded_billed": round(self.recorded_billed, 9),
            "recomputed_billed": round(self.recomputed_billed, 9),
            "differences": self.differences,
            "examples": self.examples,
        }

    def check(self, row: dict[str, Any], prices: ConfigPrices, plans: list[PlanVersion]) -> None:
        """Recompute one ledger row and note any field that differs."""
        self.events += 1
        version = None
        if row["provider"] and row["upstream_model"]:
            history = prices.history(row["model"], row["provider"], row["upstream_model"])
            version = history.at(row["created_at"]) if history is not None else None
        cost = provider_cost(version.price, row) if version is not None else 0.0
        plan = plan_at(plans, row["tenant_id"], row["created_at"])
        billed = billed_amount(plan.terms, {**row, "cost_usd": cost})
        self.recorded_cost_usd += float(row["cost_usd"])
        self.recomputed_cost_usd += cost
        self.recorded_billed += float(row["billed_amount"])
        self.recomputed_billed += billed
        expected = {
            "cost_usd": cost,
            "billed_amount": billed,
            "currency": plan.terms.currency,
            "price_version": version.id if version is not None and not row["cached"] else None,
            "plan_version": plan.id,
        }
        if row["price_version"] is None:
            # Never charged (failed before any output, or no price): the cost check covers it.
            del expected["price_version"]
        wrong = {
            name: {"recorded": row[name], "recomputed": want}
            for name, want in expected.items()
            if not _same(row[name], want)
        }
        if wrong:
            self.differences += 1
            if len(self.examples) < _EXAMPLES:
                self.examples.append(
                    {
                        "request_id": row["request_id"],
                        "created_at": row["created_at"].isoformat(),
                        **wrong,
                    }
                )


def _same(recorded: Any, recomputed: Any) -> bool:
    if isinstance(recomputed, float):
        return _close(float(recorded), recomputed)
    return bool(recorded == recomputed)


async def reconcile(
    platform: Platform, config: GatewayConfig, tenant_ref: str, month: str
) -> Reconciliation:
    """Recompute every ledger row of the tenant's month; streams the rows."""
    start, end = month_bounds(month)
    tenant = await platform.tenants.get(tenant_ref)
    prices = ConfigPrices(config)
    plans = await platform.plans.history(tenant.id)
    result = Reconciliation(tenant.id, month)
    c = usage_events.c
    query = (
        select(usage_events)
        .where(c.tenant_id == tenant.id, c.created_at >= start, c.created_at < end)
        .order_by(c.created_at, c.request_id)
    )
    async with platform.db.engine.connect() as conn:
        rows = await conn.stream(query)
        async for mapping in rows.mappings():
            row = dict(mapping)
            created: datetime | None = as_utc(row["created_at"])
            assert created is not None
            row["created_at"] = created
            result.check(row, prices, plans)
    return result

"""Effective prices, as `switchboard prices` and ``GET /admin/v1/prices`` show them: for each
configured deployment the provider price version in force now and, for a tenant, what the
tenant's plan bills for the same tokens."""

from __future__ import annotations

from typing import Any

from switchboard.config import GatewayConfig
from switchboard.metering.billing import PlanVersion
from switchboard.metering.prices import PriceHistory, PriceTable, rates_per_1m

_RATES = (
    "input_per_1m",
    "output_per_1m",
    "cached_input_per_1m",
    "cache_write_per_1m",
    "embeddings_per_1m",
)


def billed_rates(model: str, provider: dict[str, Any], plan: PlanVersion) -> dict[str, Any]:
    """What the plan bills per 1M tokens of ``model``, given the provider ``rates``."""
    terms = plan.terms
    fixed = terms.model_prices.get(model)
    if fixed is not None:
        return {"currency": terms.currency, "basis": "model_price", **rates_per_1m(fixed)}
    if provider.get("input_per_1m") is None:
        return {"currency": terms.currency, "basis": "unpriced"}
    factor = (1 + terms.markup_percent / 100) * terms.exchange_rate
    scaled = {name: round(float(provider[name]) * factor, 10) for name in _RATES}
    return {"currency": terms.currency, "basis": f"markup {terms.markup_percent:g}%", **scaled}


def effective_prices(
    config: GatewayConfig, *, model: str | None = None, plan: PlanVersion | None = None
) -> list[dict[str, Any]]:
    """One row per configured deployment (of ``model`` only, when given). A ``model`` that is
    no configured name is looked up in the price book as an upstream model id."""
    table = PriceTable(config.prices)
    localities = {p.name: p.locality for p in config.providers}
    rows: list[dict[str, Any]] = []
    for route in config.models:
        if model is not None and route.name != model:
            continue
        for d in route.deployments:
            history = table.resolve(d.model, locality=localities[d.provider], configured=d.price)
            rows.append(_row(route.name, d.provider, d.model, history, plan))
    if model is not None and not rows:
        rows.append(_row(model, None, model, table.lookup(model), plan))
    return rows


def _row(
    model: str,
    provider: str | None,
    upstream: str,
    history: PriceHistory | None,
    plan: PlanVersion | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "provider": provider, "upstream_model": upstream}
    if history is None:
        row.update(version=None, priced=False)
    else:
        version = history.current
        row.update(version.view(), priced=True)
    if plan is not None:
        row["billed"] = billed_rates(model, row, plan)
    return row

"""What a request cost: the shipped price table, overridden by the gateway config.

Prices are resolved once per deployment when the config loads, never per request.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Literal

import yaml

from switchboard.config import Price

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_REGION = re.compile(r"^(us|eu|apac|global|us-gov|ca|jp|au)\.")
FREE = Price(input_per_1m=0.0, output_per_1m=0.0)


def _shipped() -> dict[str, Price]:
    raw = yaml.safe_load(
        resources.files("switchboard.metering").joinpath("prices.yaml").read_text()
    )
    table: dict[str, Price] = {}
    for family in raw.values():
        for model, price in family.items():
            table[model] = Price.model_validate(price)
    return table


class PriceTable:
    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self._prices = _shipped()
        self._prices.update(overrides or {})

    def lookup(self, upstream_model: str) -> Price | None:
        for candidate in _candidates(upstream_model):
            price = self._prices.get(candidate)
            if price is not None:
                return price
        return None

    def resolve(
        self,
        upstream_model: str,
        *,
        locality: Literal["local", "external"],
        configured: Price | None = None,
    ) -> Price | None:
        """The price for a deployment; None means an external model we have no price for."""
        if configured is not None:
            return configured
        found = self.lookup(upstream_model)
        if found is not None:
            return found
        return FREE if locality == "local" else None


def cost_usd(price: Price, tokens_input: int, tokens_output: int) -> float:
    return (tokens_input * price.input_per_1m + tokens_output * price.output_per_1m) / 1_000_000


def _candidates(model: str) -> list[str]:
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])
    for name in list(names):
        stripped = _REGION.sub("", name)
        if stripped != name:
            names.append(stripped)
    for name in list(names):
        undated = _DATED.sub("", name)
        if undated != name:
            names.append(undated)
    return names

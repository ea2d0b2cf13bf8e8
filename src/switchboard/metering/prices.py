"""The price book: what a request cost the platform, by the price version in force at its time.

The shipped catalog (prices.yaml) lists, per upstream model id, price versions with an
``effective_from`` date. The gateway config adds versions on top: ``prices:`` (an undated
price is a version that outranks the catalog for all time; dated ones join the model's list)
and ``price:`` on a deployment (the same rules, for that deployment only). Versions are
resolved once per deployment when the config loads; the version of a request is picked by its
time (`PriceHistory.at`), so a newer version never changes what an older request cost.

Every version has an id recorded with the usage event (``price_version``), e.g.
``catalog:gpt-4o@2024-10-02``, ``config:gpt-4o@always`` or ``deployment:my-model@2026-01-01``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

from switchboard.config import Price

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_REGION = re.compile(r"^(us|eu|apac|global|us-gov|ca|jp|au)\.")
FREE = Price(input_per_1m=0.0, output_per_1m=0.0)
_ALWAYS = date.min  # an undated version: in force for all time


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One dated price of one model, and where it came from."""

    id: str
    price: Price
    effective_from: date

    def view(self) -> dict[str, Any]:
        return {
            "version": self.id,
            "effective_from": None
            if self.effective_from == _ALWAYS
            else self.effective_from.isoformat(),
            **rates_per_1m(self.price),
        }


def rates_per_1m(price: Price) -> dict[str, float]:
    return {
        "input_per_1m": price.input_per_1m,
        "output_per_1m": price.output_per_1m,
        "cached_input_per_1m": cached_input_price(price),
        "cache_write_per_1m": cache_write_price(price),
        "embeddings_per_1m": embeddings_price(price),
    }


@dataclass(frozen=True, slots=True)
class PriceHistory:
    """A model's price versions, oldest first; `at` picks the one in force at a time."""

    versions: tuple[PriceVersion, ...]

    def at(self, when: datetime) -> PriceVersion:
        """The newest version in force at ``when``; the oldest one for anything earlier."""
        day = when.astimezone(UTC).date() if when.tzinfo else when.date()
        chosen = self.versions[0]
        for version in self.versions[1:]:
            if version.effective_from <= day:
                chosen = version
        return chosen

    @property
    def current(self) -> PriceVersion:
        return self.at(datetime.now(UTC))


def _history(versions: Sequence[PriceVersion]) -> PriceHistory:
    # Stable sort: of two versions on the same day, the later-listed (config over catalog) wins.
    return PriceHistory(tuple(sorted(versions, key=lambda v: v.effective_from)))


def _versions(source: str, model: str, prices: Price | Sequence[Price]) -> list[PriceVersion]:
    listed = [prices] if isinstance(prices, Price) else list(prices)
    out = []
    for price in listed:
        when = price.effective_from or _ALWAYS
        label = "always" if when == _ALWAYS else when.isoformat()
        out.append(PriceVersion(f"{source}:{model}@{label}", price, when))
    return out


@cache
def _shipped() -> dict[str, tuple[PriceVersion, ...]]:
    raw = yaml.safe_load(
        resources.files("switchboard.metering").joinpath("prices.yaml").read_text()
    )
    table: dict[str, tuple[PriceVersion, ...]] = {}
    for family in raw.values():
        for model, listed in family.items():
            prices = [Price.model_validate(p) for p in listed]
            table[model] = _history(_versions("catalog", model, prices)).versions
    return table


def _merge(base: Sequence[PriceVersion], extra: Sequence[PriceVersion]) -> tuple[PriceVersion, ...]:
    """``extra`` on top of ``base``: an undated extra version replaces everything before it."""
    if any(v.effective_from == _ALWAYS for v in extra):
        base = ()
    return _history([*base, *extra]).versions


class PriceTable:
    """The shipped catalog with the config's ``prices:`` on top."""

    def __init__(self, overrides: Mapping[str, Price | Sequence[Price]] | None = None) -> None:
        self._prices = dict(_shipped())
        for model, prices in (overrides or {}).items():
            extra = _versions("config", model, prices)
            self._prices[model] = _merge(self._prices.get(model, ()), extra)

    def models(self) -> list[str]:
        return sorted(self._prices)

    def lookup(self, upstream_model: str) -> PriceHistory | None:
        for candidate in _candidates(upstream_model):
            versions = self._prices.get(candidate)
            if versions:
                return PriceHistory(versions)
        return None

    def resolve(
        self,
        upstream_model: str,
        *,
        locality: Literal["local", "external"],
        configured: Price | None = None,
    ) -> PriceHistory | None:
        """The price history of a deployment; None: an external model we have no price for."""
        found = self.lookup(upstream_model)
        if configured is not None:
            extra = _versions("deployment", upstream_model, configured)
            return PriceHistory(_merge(found.versions if found else (), extra))
        if found is not None:
            return found
        if locality == "local":
            return PriceHistory((PriceVersion("free:local", FREE, _ALWAYS),))
        return None


def cached_input_price(price: Price) -> float:
    return price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m


def cache_write_price(price: Price) -> float:
    return price.input_per_1m if price.cache_write_per_1m is None else price.cache_write_per_1m


def embeddings_price(price: Price) -> float:
    return price.input_per_1m if price.embeddings_per_1m is None else price.embeddings_per_1m


def cost_usd(
    price: Price,
    tokens_input: int,
    tokens_output: int,
    *,
    cached_input: int = 0,
    cache_write: int = 0,
    embedding: bool = False,
) -> float:
    """What the tokens cost at ``price``. ``tokens_input`` includes the cache reads
    (``cached_input``) and writes (``cache_write``), as OpenAI's prompt_tokens does."""
    if embedding:
        return tokens_input * embeddings_price(price) / 1_000_000
    fresh = max(0, tokens_input - cached_input - cache_write)
    total = (
        fresh * price.input_per_1m
        + cached_input * cached_input_price(price)
        + cache_write * cache_write_price(price)
        + tokens_output * price.output_per_1m
    )
    return total / 1_000_000


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

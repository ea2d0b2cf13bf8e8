"""The price table: lookups tolerate provider spellings; resolution order is config first."""

from __future__ import annotations

import pytest

from switchboard.config import Price
from switchboard.metering.prices import FREE, PriceTable, cost_usd


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


def p(input_per_1m: float, output_per_1m: float = 0.0) -> Price:
    return Price(input_per_1m=input_per_1m, output_per_1m=output_per_1m)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", p(2.50, 10.00)),
        ("gpt-4o-mini", p(0.15, 0.60)),
        ("text-embedding-3-small", p(0.02, 0.0)),
        ("claude-sonnet-4-20250514", p(3.00, 15.00)),
        ("anthropic.claude-3-haiku-20240307-v1:0", p(0.25, 1.25)),
    ],
)
def test_exact(table: PriceTable, model: str, expected: Price) -> None:
    assert table.lookup(model) == expected


def test_dated_suffix_falls_back_to_the_family(table: PriceTable) -> None:
    assert table.lookup("gpt-4o-2024-08-06") == p(2.50, 10.00)
    assert table.lookup("gpt-4o-mini-2024-07-18") == p(0.15, 0.60)  # not gpt-4o's price
    assert table.lookup("gpt-4o-mini") != table.lookup("gpt-4o")


def test_provider_prefix(table: PriceTable) -> None:
    assert table.lookup("openai/gpt-4o") == p(2.50, 10.00)
    assert table.lookup("openai/gpt-4o-mini") == p(0.15, 0.60)
    assert table.lookup("openrouter/openai/gpt-4o-2024-08-06") == p(2.50, 10.00)


@pytest.mark.parametrize("region", ["us", "eu", "apac", "global"])
def test_bedrock_region_prefix(table: PriceTable, region: str) -> None:
    model = f"{region}.anthropic.claude-3-5-haiku-20241022-v1:0"
    assert table.lookup(model) == p(0.80, 4.00)


@pytest.mark.parametrize(
    "model",
    [
        "llama3.1:8b",
        "gpt-4o-turbo-ultra",
        "xx.anthropic.claude-3-5-haiku-20241022-v1:0",  # not a region
        "gpt-4o-2024-08",  # not a full date
        "",
    ],
)
def test_unknown_is_none(table: PriceTable, model: str) -> None:
    assert table.lookup(model) is None


def test_resolve_order(table: PriceTable) -> None:
    configured = p(9.0, 9.0)
    assert table.resolve("gpt-4o", locality="external", configured=configured) == configured
    assert table.resolve("llama3", locality="local", configured=configured) == configured
    assert table.resolve("gpt-4o", locality="external") == p(2.50, 10.00)
    assert table.resolve("llama3.1:8b", locality="local") == FREE
    assert table.resolve("llama3.1:8b", locality="local") == p(0.0, 0.0)
    assert table.resolve("my-private-model", locality="external") is None


def test_a_known_model_served_locally_keeps_its_price(table: PriceTable) -> None:
    # A local deployment of a listed upstream id is priced from the table, not free.
    assert table.resolve("gpt-4o", locality="local") == p(2.50, 10.00)


def test_overrides_replace_and_extend_the_shipped_table() -> None:
    custom = PriceTable({"gpt-4o": p(1.0, 2.0), "my-private-model": p(0.3, 0.4)})
    assert custom.lookup("gpt-4o") == p(1.0, 2.0)
    assert custom.lookup("gpt-4o-2024-08-06") == p(1.0, 2.0)
    assert custom.resolve("my-private-model", locality="external") == p(0.3, 0.4)
    assert custom.lookup("gpt-4o-mini") == p(0.15, 0.60)  # the rest is untouched
    assert PriceTable().lookup("gpt-4o") == p(2.50, 10.00)  # overrides do not leak


def test_cost_usd() -> None:
    price = p(2.50, 10.00)
    assert cost_usd(price, 1_000_000, 0) == pytest.approx(2.50)
    assert cost_usd(price, 0, 1_000_000) == pytest.approx(10.00)
    assert cost_usd(price, 1200, 300) == pytest.approx((1200 * 2.5 + 300 * 10) / 1e6)
    assert cost_usd(price, 1200, 300) == pytest.approx(0.006)
    assert cost_usd(price, 0, 0) == 0.0
    assert cost_usd(FREE, 10**9, 10**9) == 0.0
    assert cost_usd(p(0.02), 500, 999) == pytest.approx(0.00001)

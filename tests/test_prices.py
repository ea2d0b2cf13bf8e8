"""The price book: lookups tolerate provider spellings; versions are picked by request time;
config and deployment prices are newer versions on top of the shipped catalog."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from switchboard.config import Price
from switchboard.metering.charging import cache_tokens, charge, provider_cost
from switchboard.metering.prices import FREE, PriceHistory, PriceTable, cost_usd
from switchboard.metering.usage import UsageEvent


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


def p(input_per_1m: float, output_per_1m: float = 0.0, **more: object) -> Price:
    return Price.model_validate(
        {"input_per_1m": input_per_1m, "output_per_1m": output_per_1m, **more}
    )


def rates(history: PriceHistory | None, when: datetime | None = None) -> tuple[float, float]:
    assert history is not None
    version = history.at(when) if when else history.current
    return version.price.input_per_1m, version.price.output_per_1m


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", (2.50, 10.00)),
        ("gpt-4o-mini", (0.15, 0.60)),
        ("claude-sonnet-4-20250514", (3.00, 15.00)),
        ("anthropic.claude-3-haiku-20240307-v1:0", (0.25, 1.25)),
    ],
)
def test_exact(table: PriceTable, model: str, expected: tuple[float, float]) -> None:
    assert rates(table.lookup(model)) == expected


def test_every_shipped_version_is_valid_and_ordered(table: PriceTable) -> None:
    for model in table.models():
        history = table.lookup(model)
        assert history is not None
        assert history.versions
        days = [v.effective_from for v in history.versions]
        assert days == sorted(days), model
        assert all(v.id.startswith(f"catalog:{model}@") for v in history.versions)


def test_embeddings_and_cache_prices(table: PriceTable) -> None:
    emb = table.lookup("text-embedding-3-small")
    assert emb is not None
    assert emb.current.price.embeddings_per_1m == 0.02
    claude = table.lookup("claude-3-5-haiku-20241022")
    assert claude is not None
    price = claude.current.price
    assert (price.cached_input_per_1m, price.cache_write_per_1m) == (0.08, 1.0)


def test_versions_are_picked_by_request_time(table: PriceTable) -> None:
    history = table.lookup("gpt-4o")
    assert rates(history, at("2024-06-01")) == (5.00, 15.00)
    assert rates(history, at("2024-10-01T23:59:59")) == (5.00, 15.00)
    assert rates(history, at("2024-10-02")) == (2.50, 10.00)
    assert rates(history, at("2026-01-01")) == (2.50, 10.00)
    # Before the first version: the oldest one applies.
    assert rates(history, at("2020-01-01")) == (5.00, 15.00)
    assert history is not None
    assert history.at(at("2024-06-01")).id == "catalog:gpt-4o@2024-05-13"


def test_dated_suffix_falls_back_to_the_family(table: PriceTable) -> None:
    assert rates(table.lookup("gpt-4o-2024-08-06")) == (2.50, 10.00)
    assert rates(table.lookup("gpt-4o-mini-2024-07-18")) == (0.15, 0.60)


def test_provider_prefix(table: PriceTable) -> None:
    assert rates(table.lookup("openai/gpt-4o")) == (2.50, 10.00)
    assert rates(table.lookup("openai/gpt-4o-mini")) == (0.15, 0.60)
    assert rates(table.lookup("openrouter/openai/gpt-4o-2024-08-06")) == (2.50, 10.00)


@pytest.mark.parametrize("region", ["us", "eu", "apac", "global"])
def test_bedrock_region_prefix(table: PriceTable, region: str) -> None:
    model = f"{region}.anthropic.claude-3-5-haiku-20241022-v1:0"
    assert rates(table.lookup(model)) == (0.80, 4.00)


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
    found = table.resolve("gpt-4o", locality="external", configured=configured)
    assert found is not None
    assert found.current.price == configured
    assert found.current.id == "deployment:gpt-4o@always"
    # An undated deployment price outranks the catalog for all time, old requests included.
    assert found.at(at("2024-06-01")).price == configured
    local = table.resolve("llama3", locality="local", configured=configured)
    assert local is not None
    assert local.current.price == configured
    assert rates(table.resolve("gpt-4o", locality="external")) == (2.50, 10.00)
    free = table.resolve("llama3.1:8b", locality="local")
    assert free is not None
    assert free.current.price == FREE
    assert free.current.id == "free:local"
    assert table.resolve("my-private-model", locality="external") is None


def test_a_dated_deployment_price_is_one_more_version(table: PriceTable) -> None:
    dated = p(1.0, 1.0, effective_from="2030-01-01")
    history = table.resolve("gpt-4o", locality="external", configured=dated)
    assert rates(history, at("2029-12-31")) == (2.50, 10.00)
    assert rates(history, at("2030-01-01")) == (1.0, 1.0)


def test_a_known_model_served_locally_keeps_its_price(table: PriceTable) -> None:
    assert rates(table.resolve("gpt-4o", locality="local")) == (2.50, 10.00)


def test_overrides_are_newer_versions() -> None:
    custom = PriceTable(
        {
            "gpt-4o": p(1.0, 2.0),
            "my-private-model": p(0.3, 0.4),
            "gpt-4o-mini": [p(0.2, 0.8, effective_from=date(2030, 1, 1))],
        }
    )
    assert rates(custom.lookup("gpt-4o")) == (1.0, 2.0)
    assert rates(custom.lookup("gpt-4o"), at("2024-06-01")) == (1.0, 2.0)  # undated: always
    assert rates(custom.lookup("gpt-4o-2024-08-06")) == (1.0, 2.0)
    assert rates(custom.resolve("my-private-model", locality="external")) == (0.3, 0.4)
    mini = custom.lookup("gpt-4o-mini")
    assert rates(mini, at("2029-01-01")) == (0.15, 0.60)  # the catalog's version still holds
    assert rates(mini, at("2030-01-02")) == (0.2, 0.8)
    assert mini is not None
    assert mini.at(at("2030-01-02")).id == "config:gpt-4o-mini@2030-01-01"
    assert rates(PriceTable().lookup("gpt-4o")) == (2.50, 10.00)  # overrides do not leak


def test_cost_usd() -> None:
    price = p(2.50, 10.00)
    assert cost_usd(price, 1_000_000, 0) == pytest.approx(2.50)
    assert cost_usd(price, 0, 1_000_000) == pytest.approx(10.00)
    assert cost_usd(price, 1200, 300) == pytest.approx((1200 * 2.5 + 300 * 10) / 1e6)
    assert cost_usd(price, 0, 0) == 0.0
    assert cost_usd(FREE, 10**9, 10**9) == 0.0
    assert cost_usd(p(0.02), 500, 999, embedding=True) == pytest.approx(0.00001)


def test_cost_of_cache_reads_and_writes() -> None:
    price = p(3.0, 15.0, cached_input_per_1m=0.3, cache_write_per_1m=3.75)
    # 1000 prompt tokens of which 600 read from the cache and 300 written to it: 100 fresh.
    expected = (100 * 3.0 + 600 * 0.3 + 300 * 3.75 + 50 * 15.0) / 1e6
    assert cost_usd(price, 1000, 50, cached_input=600, cache_write=300) == pytest.approx(expected)
    # Without cache prices, cache tokens cost the input price.
    plain = p(3.0, 15.0)
    assert cost_usd(plain, 1000, 50, cached_input=600) == cost_usd(plain, 1000, 50)


def test_embeddings_price_wins_for_embedding_requests() -> None:
    price = p(9.0, embeddings_per_1m=0.5)
    assert cost_usd(price, 2_000_000, 0, embedding=True) == pytest.approx(1.0)
    assert cost_usd(price, 2_000_000, 0) == pytest.approx(18.0)


def test_cache_tokens_from_openai_usage() -> None:
    assert cache_tokens(None) == (0, 0)
    assert cache_tokens({"prompt_tokens": 5}) == (0, 0)
    usage = {"prompt_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 3}}
    assert cache_tokens(usage) == (7, 3)
    assert cache_tokens({"prompt_tokens_details": {"cached_tokens": None}}) == (0, 0)


def _event(when: str, **kw: object) -> UsageEvent:
    return UsageEvent(
        request_id="r1",
        tenant_id="t1",
        key_id=None,
        created_at=at(when),
        endpoint=str(kw.pop("endpoint", "chat.completions")),
        **kw,  # type: ignore[arg-type]
    )


def test_charge_uses_the_version_of_the_request_time(table: PriceTable) -> None:
    history = table.lookup("gpt-4o")
    old, new = _event("2024-06-01", model="gpt-4o"), _event("2025-06-01", model="gpt-4o")
    usage = {"prompt_tokens_details": {"cached_tokens": 400_000}}
    charge(old, history, 1_000_000, 1_000_000, usage)
    charge(new, history, 1_000_000, 1_000_000, usage)
    assert old.price_version == "catalog:gpt-4o@2024-05-13"
    assert old.cost_usd == pytest.approx(5.0 + 15.0)  # no cache price then: input price
    assert new.price_version == "catalog:gpt-4o@2024-10-02"
    assert new.cost_usd == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 10.0)
    assert new.tokens_cached_input == 400_000
    # The stored row prices the same way (what reconcile does).
    assert provider_cost(history.at(new.created_at).price, new.as_row()) == new.cost_usd  # type: ignore[union-attr]


def test_charge_without_a_price_costs_nothing() -> None:
    event = _event("2025-06-01")
    charge(event, None, 10, 10, None)
    assert (event.cost_usd, event.price_version, event.tokens_input) == (0.0, None, 10)


def test_a_cache_hit_costs_nothing() -> None:
    row = _event("2025-06-01", cached=True, tokens_input=100).as_row()
    assert provider_cost(p(1.0, 1.0), row) == 0.0

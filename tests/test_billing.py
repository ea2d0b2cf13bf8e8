"""Tenant plans and billed amounts: the admin API and the ledger writer, end to end through
the gateway (SQLite and PostgreSQL), plus the plan arithmetic on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import RunningGateway
from switchboard.metering.billing import (
    BillingSink,
    PlanTerms,
    PlanVersion,
    billed_amount,
    plan_at,
)
from switchboard.metering.usage import UsageEvent

# gpt-fake is gpt-4o-mini upstream: 0.15 in, 0.60 out per 1M, catalog version of 2024-01-01.
GPT_MINI_VERSION = "catalog:gpt-4o-mini@2024-01-01"


def chat(gateway: RunningGateway, key: str, model: str = "gpt-fake", **body: Any) -> str:
    reply = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hello there"}], **body},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.headers["x-request-id"]


def put_plan(gateway: RunningGateway, slug: str, **terms: Any) -> httpx.Response:
    return gateway.admin(
        "PUT", f"/admin/v1/tenants/{gateway.keys[slug + ':slug']}/plan", json=terms
    )


def test_a_new_tenant_is_billed_at_cost_in_usd(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("plain")
    plan = gateway.admin("GET", f"/admin/v1/tenants/{gateway.keys['plain:slug']}/plan").json()
    assert plan["version"] is None
    assert plan["history"] == []
    assert (plan["currency"], plan["markup_percent"]) == ("USD", 0.0)
    row = gateway.usage_of("plain", chat(gateway, key))
    assert row["cost_usd"] > 0
    assert row["billed_amount"] == row["cost_usd"]
    assert (row["currency"], row["plan_version"]) == ("USD", None)
    assert row["price_version"] == GPT_MINI_VERSION
    expected = (row["tokens_input"] * 0.15 + row["tokens_output"] * 0.60) / 1e6
    assert row["cost_usd"] == pytest.approx(expected)


def test_markup_and_fixed_model_prices(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("reseller")
    set_ = put_plan(gateway, "reseller", markup_percent=50)
    assert set_.status_code == 200, set_.text
    marked = gateway.usage_of("reseller", chat(gateway, key))
    assert marked["plan_version"] == set_.json()["version"]
    assert marked["billed_amount"] == pytest.approx(marked["cost_usd"] * 1.5)
    stream_id = chat(gateway, key, stream=True, stream_options={"include_usage": True})
    streamed = gateway.usage_of("reseller", stream_id)
    assert streamed["cost_usd"] > 0
    assert streamed["billed_amount"] == pytest.approx(streamed["cost_usd"] * 1.5)

    fixed = put_plan(
        gateway,
        "reseller",
        currency="EUR",
        exchange_rate=0.9,
        markup_percent=10,
        model_prices={"gpt-fake": {"input_per_1m": 1000, "output_per_1m": 2000}},
    )
    assert fixed.status_code == 200, fixed.text
    row = gateway.usage_of("reseller", chat(gateway, key))
    assert row["currency"] == "EUR"
    assert row["plan_version"] == fixed.json()["version"]
    expected = (row["tokens_input"] * 1000 + row["tokens_output"] * 2000) / 1e6
    assert row["billed_amount"] == pytest.approx(expected)
    other = gateway.usage_of("reseller", chat(gateway, key, model="mixed"))
    assert other["billed_amount"] == pytest.approx(other["cost_usd"] * 1.1 * 0.9)
    # Earlier rows keep what they were billed.
    again = gateway.usage_of("reseller", marked["request_id"])
    assert (again["billed_amount"], again["currency"]) == (marked["billed_amount"], "USD")

    plan = gateway.admin("GET", f"/admin/v1/tenants/{gateway.keys['reseller:slug']}/plan")
    assert [v["version"] for v in plan.json()["history"]] == [
        set_.json()["version"],
        fixed.json()["version"],
    ]


def test_effective_prices(gateway: RunningGateway) -> None:
    gateway.new_tenant("quoted")
    slug = gateway.keys["quoted:slug"]
    assert put_plan(gateway, "quoted", markup_percent=20).status_code == 200
    rows = gateway.admin("GET", "/admin/v1/prices", params={"model": "gpt-fake"}).json()["data"]
    assert [(r["provider"], r["version"]) for r in rows] == [("openai-fake", GPT_MINI_VERSION)]
    assert "billed" not in rows[0]
    billed = gateway.admin(
        "GET", "/admin/v1/prices", params={"model": "gpt-fake", "tenant": slug}
    ).json()["data"][0]["billed"]
    assert billed["currency"] == "USD"
    assert billed["input_per_1m"] == pytest.approx(0.18)
    assert billed["output_per_1m"] == pytest.approx(0.72)
    everything = gateway.admin("GET", "/admin/v1/prices").json()["data"]
    assert {r["model"] for r in everything} >= {"gpt-fake", "llama-fake", "broken"}
    llama = next(r for r in everything if r["model"] == "llama-fake")
    assert llama["version"] == "free:local"


@pytest.mark.parametrize(
    ("terms", "param"),
    [
        ({"markup_percent": "lots"}, "markup_percent"),
        ({"currency": "euro"}, "currency"),
        ({"currency": "USD", "exchange_rate": 2}, None),
        ({"included_allowance": -1}, "included_allowance"),
        ({"surprise": 1}, "surprise"),
        ({"effective_from": "2000-01-01T00:00:00+00:00"}, "effective_from"),
        ({"effective_from": "2999-01-01T00:00:00"}, "effective_from"),
        ({"effective_from": "soon"}, "effective_from"),
    ],
)
def test_bad_plans_are_refused(
    gateway: RunningGateway, terms: dict[str, Any], param: str | None
) -> None:
    if "refused:slug" not in gateway.keys:
        gateway.new_tenant("refused")
    reply = put_plan(gateway, "refused", **terms)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    if param is not None:
        assert error["param"] == param
    plan = gateway.admin("GET", f"/admin/v1/tenants/{gateway.keys['refused:slug']}/plan")
    assert plan.json()["history"] == []


def test_plans_are_admin_only(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("sneaky")
    path = f"/admin/v1/tenants/{gateway.keys['sneaky:slug']}/plan"
    as_tenant = httpx.put(
        gateway.url + path,
        json={"markup_percent": -100},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert as_tenant.status_code == 401
    assert gateway.admin("GET", path).json()["history"] == []


# -- the arithmetic, without a gateway ---------------------------------------------------------


def _event(**fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": "r",
        "tenant_id": "ten_a",
        "key_id": None,
        "created_at": datetime(2026, 3, 1, tzinfo=UTC),
        "endpoint": "chat.completions",
        "model": "m",
        "tokens_input": 1000,
        "tokens_output": 500,
        "cost_usd": 0.01,
        **fields,
    }
    return UsageEvent(**values)


def test_plan_at_picks_the_version_in_force() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    history = [
        PlanVersion(1, "ten_a", t0, PlanTerms(markup_percent=10)),
        PlanVersion(2, "ten_a", t0 + timedelta(days=10), PlanTerms(markup_percent=20)),
    ]
    assert plan_at(history, "ten_a", t0 - timedelta(seconds=1)).id is None
    assert plan_at(history, "ten_a", t0).id == 1
    assert plan_at(history, "ten_a", t0 + timedelta(days=9)).id == 1
    assert plan_at(history, "ten_a", t0 + timedelta(days=10)).id == 2


def test_billed_amount_rules() -> None:
    event = _event()
    assert billed_amount(PlanTerms(), event) == pytest.approx(0.01)
    assert billed_amount(PlanTerms(markup_percent=25), event) == pytest.approx(0.0125)
    eur = PlanTerms(currency="EUR", exchange_rate=0.5, markup_percent=100)
    assert billed_amount(eur, event) == pytest.approx(0.01)
    fixed = PlanTerms.model_validate(
        {"markup_percent": 900, "model_prices": {"m": {"input_per_1m": 2, "output_per_1m": 4}}}
    )
    assert billed_amount(fixed, event) == pytest.approx((1000 * 2 + 500 * 4) / 1e6)
    assert billed_amount(fixed, _event(model="other")) == pytest.approx(0.1)
    assert billed_amount(fixed, _event(cached=True)) == 0.0  # cache hits are not billed
    hits = PlanTerms(markup_percent=50, cache_hit_per_1m=0.4)  # unless the plan prices them
    hit = _event(cached=True)
    assert billed_amount(hits, hit) == pytest.approx((1000 + 500) * 0.4 / 1e6)
    assert billed_amount(hits, hit.as_row()) == billed_amount(hits, hit)
    assert billed_amount(fixed, event.as_row()) == billed_amount(fixed, event)


class _Ledger:
    def __init__(self) -> None:
        self.written: list[UsageEvent] = []

    async def write(self, events: Any) -> None:
        self.written.extend(events)


class _Plans:
    def __init__(self, history: dict[str, list[PlanVersion]]) -> None:
        self.history = history
        self.asked: list[list[str]] = []

    async def histories(self, tenant_ids: Any) -> dict[str, list[PlanVersion]]:
        self.asked.append(list(tenant_ids))
        return {t: self.history[t] for t in tenant_ids if t in self.history}


async def test_billing_sink_bills_each_event_by_its_own_tenant_and_time() -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    plans = _Plans(
        {
            "ten_a": [
                PlanVersion(7, "ten_a", t0, PlanTerms(markup_percent=100)),
                PlanVersion(
                    8, "ten_a", t0 + timedelta(hours=1), PlanTerms(currency="EUR", exchange_rate=2)
                ),
            ]
        }
    )
    ledger = _Ledger()
    events = [
        _event(request_id="early", created_at=t0 - timedelta(minutes=1)),
        _event(request_id="a", created_at=t0 + timedelta(minutes=1)),
        _event(request_id="b", created_at=t0 + timedelta(hours=2)),
        _event(request_id="other", tenant_id="ten_b", created_at=t0 + timedelta(hours=2)),
    ]
    await BillingSink(ledger, plans).write(events)
    assert plans.asked == [["ten_a", "ten_b"]]  # one lookup per batch
    billed = {
        e.request_id: (round(e.billed_amount, 9), e.currency, e.plan_version)
        for e in ledger.written
    }
    assert billed == {
        "early": (0.01, "USD", None),
        "a": (0.02, "USD", 7),
        "b": (0.02, "EUR", 8),
        "other": (0.01, "USD", None),
    }


def test_cache_hits_are_billed_at_the_plans_own_price(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("cache-price")
    slug = gateway.keys["cache-price:slug"]
    config = {"cache": {"enabled": True, "ttl_seconds": 60}}
    assert gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config).status_code == 200
    assert put_plan(gateway, "cache-price", markup_percent=100, cache_hit_per_1m=2.0).is_success
    first = chat(gateway, key)
    hit = chat(gateway, key)
    served, cached = gateway.usage_of("cache-price", first), gateway.usage_of("cache-price", hit)
    assert not served["cached"]
    assert served["billed_amount"] == pytest.approx(served["cost_usd"] * 2)
    assert cached["cached"]
    assert cached["cost_usd"] == 0
    tokens = cached["tokens_input"] + cached["tokens_output"]
    assert tokens > 0
    assert cached["billed_amount"] == pytest.approx(tokens * 2.0 / 1e6)

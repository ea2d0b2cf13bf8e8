"""Mixed traffic through the real gateway (ok, failed, cut streams, cache hits, fallbacks,
embeddings, local and Anthropic models, a plan change mid-month) reconciles to zero
differences; a different price book does not. The invoice preview of the same month adds up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from conftest import RunningGateway, gateway_config, gateway_database, start_gateway
from fakes.server import ServerThread
from switchboard.config import ModelConfig, Price
from switchboard.metering.invoice import month_bounds
from switchboard.metering.reconcile import reconcile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def billed_gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: ServerThread,
    fake_ollama: ServerThread,
    fake_anthropic: ServerThread,
) -> Iterator[RunningGateway]:
    data_dir = tmp_path_factory.mktemp("billed")
    url = gateway_database(request, data_dir)
    base = gateway_config(fake_openai.url, fake_ollama.url, fake_anthropic.url)
    chain = ModelConfig.model_validate(
        {
            "name": "fallback-chain",
            "deployments": [{"provider": "openai-fake", "model": "error-500"}],
            "fallbacks": ["gpt-fake"],
        }
    )
    config = base.model_copy(update={"models": [*base.models, chain]})
    server, app = start_gateway(data_dir, url, config)
    with server:
        yield RunningGateway(url=server.url, app=app, settings=app.state.runtime.settings)


def send(gw: RunningGateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gw.url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=15
    )


def chat(model: str, text: str = "hello", **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **more}


def mixed_traffic(gw: RunningGateway, key: str, salt: str) -> int:
    """Sends a mix of requests (``salt`` makes them new to the response cache); returns how
    many requests the ledger must hold."""
    sent = 0
    for body in (
        chat("gpt-fake", f"hello {salt}"),
        chat("gpt-fake", salt, stream=True, stream_options={"include_usage": True}),
        chat("gpt-fake", f"no usage asked {salt}", stream=True),
        chat("llama-fake", salt),
        chat("claude-fake", salt, max_tokens=20),
        chat("fallback-chain", salt),
        chat("broken", salt),
        chat("upstream-rejects", salt),
        chat("unreachable", salt),
        chat("cut", salt, stream=True),
        chat("gpt-fake", f"cache me {salt}"),
        chat("gpt-fake", f"cache me {salt}"),  # the cache hit
    ):
        with (
            httpx.Client(timeout=15) as client,
            client.stream(
                "POST",
                gw.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json=body,
            ) as reply,
        ):
            for _ in reply.iter_bytes():
                pass
        sent += 1
    embedded = send(gw, key, "/v1/embeddings", {"model": "emb-openai", "input": salt})
    assert embedded.status_code == 200
    return sent + 1


def test_mixed_traffic_reconciles_to_zero(billed_gateway: RunningGateway) -> None:
    gw = billed_gateway
    key = gw.new_tenant("mixed")
    slug = gw.keys["mixed:slug"]
    path = f"/admin/v1/tenants/{slug}"
    assert gw.admin("PUT", path + "/config", json={"cache": {"enabled": True}}).status_code == 200
    assert gw.admin("PATCH", path, json={"name": "<b>Acme & Sons</b>"}).status_code == 200
    assert gw.admin("PUT", path + "/plan", json={"markup_percent": 30}).status_code == 200
    expected = mixed_traffic(gw, key, "first")
    gw.usage("mixed", at_least=expected)
    eur = {
        "currency": "EUR",
        "exchange_rate": 0.9,
        "markup_percent": 10,
        "included_allowance": 0.0001,
        "model_prices": {"gpt-fake": {"input_per_1m": 500, "output_per_1m": 1500}},
    }
    assert gw.admin("PUT", path + "/plan", json=eur).status_code == 200
    expected += mixed_traffic(gw, key, "second round")
    rows = gw.usage("mixed", at_least=expected)
    assert len(rows) == expected
    assert any(r["cached"] for r in rows)
    assert any(r["status"] >= 500 for r in rows)
    assert any(
        r["route"] and "error-500" in r["route"] for r in rows if r["model"] == "fallback-chain"
    )
    assert {r["currency"] for r in rows} == {"USD", "EUR"}

    month = datetime.now(UTC).strftime("%Y-%m")
    rt = gw.app.state.runtime
    result = asyncio.run(_reconcile(gw, slug, month, rt.config))
    assert result.events == expected
    assert result.differences == 0, result.examples
    assert result.recorded_cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert result.recomputed_billed == pytest.approx(sum(r["billed_amount"] for r in rows))

    # Another price book gives other costs, and reconcile says which rows.
    cheaper = rt.config.model_copy(
        update={"prices": {"gpt-4o-mini": Price(input_per_1m=0.01, output_per_1m=0.02)}}
    )
    other = asyncio.run(_reconcile(gw, slug, month, cheaper))
    gpt_rows = [r for r in rows if r["price_version"] and "gpt-4o-mini" in r["price_version"]]
    assert other.differences == len(gpt_rows) > 0
    assert {"cost_usd", "price_version"} <= set(other.examples[0])

    invoice = gw.admin("GET", path + "/invoice", params={"month": month}).json()
    assert invoice["currency"] == "EUR"
    eur_rows = [r for r in rows if r["currency"] == "EUR"]
    assert invoice["subtotal"] == pytest.approx(sum(r["billed_amount"] for r in eur_rows), abs=1e-6)
    assert invoice["allowance_applied"] == pytest.approx(0.0001), orjson.dumps(invoice).decode()
    assert invoice["total"] == pytest.approx(invoice["subtotal"] - 0.0001, abs=1e-6)
    usd_rows = [r for r in rows if r["currency"] == "USD"]
    assert invoice["other_currencies"]["USD"] == pytest.approx(
        sum(r["billed_amount"] for r in usd_rows), abs=1e-6
    )
    lines = {(line["model"], line["currency"]): line for line in invoice["lines"]}
    gpt_eur = lines[("gpt-fake", "EUR")]
    assert gpt_eur["requests"] == sum(1 for r in eur_rows if r["model"] == "gpt-fake")
    assert gpt_eur["tokens_input"] == sum(
        r["tokens_input"] for r in eur_rows if r["model"] == "gpt-fake"
    )
    page = gw.admin("GET", path + "/invoice", params={"month": month, "format": "html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;Acme &amp; Sons&lt;/b&gt;" in page.text
    assert "<b>Acme" not in page.text
    assert "<script" not in page.text
    assert "http" not in page.text.split("<body>", 1)[1]


async def _reconcile(gw: RunningGateway, slug: str, month: str, config: Any) -> Any:
    from switchboard.platform import Platform
    from switchboard.store import Database

    db = Database(gw.settings.resolved_database_url())
    try:
        return await reconcile(Platform(db), config, slug, month)
    finally:
        await db.dispose()


def test_invoice_checks_the_month(billed_gateway: RunningGateway) -> None:
    gw = billed_gateway
    gw.new_tenant("months")
    path = f"/admin/v1/tenants/{gw.keys['months:slug']}/invoice"
    for bad in ("2026-13", "26-01", "", "2026-1"):
        reply = gw.admin("GET", path, params={"month": bad})
        assert reply.status_code == 400
        assert reply.json()["error"]["param"] == "month"
    empty = gw.admin("GET", path, params={"month": "2020-02"}).json()
    assert (empty["lines"], empty["total"], empty["currency"]) == ([], 0.0, "USD")
    assert empty["period"] == {
        "from": "2020-02-01T00:00:00+00:00",
        "until": "2020-03-01T00:00:00+00:00",
    }
    assert month_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)

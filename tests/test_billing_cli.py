"""The billing commands in process: plan set/show, prices, usage report (analytics), invoice,
and usage reconcile against a ledger written the way the gateway writes it."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

from switchboard.cli import app
from switchboard.metering.billing import BillingSink
from switchboard.metering.charging import charge
from switchboard.metering.prices import PriceTable
from switchboard.metering.usage import UsageEvent
from switchboard.platform import Platform
from switchboard.settings import Settings
from switchboard.store import Database

CONFIG = """
providers:
  - {name: openai, kind: openai, base_url: "http://127.0.0.1:9/v1", locality: external}
  - {name: local, kind: ollama, base_url: "http://127.0.0.1:9", locality: local}
models:
  - name: gpt
    deployments: [{provider: openai, model: gpt-4o-mini}]
  - name: llama
    deployments: [{provider: local, model: "llama3.1:8b"}]
  - name: mystery
    deployments: [{provider: openai, model: my-finetune}]
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG)
    values = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return values | {
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHBOARD_CONFIG": str(config),
    }


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


async def _write(env: dict[str, str], tenant: str, events: list[dict[str, Any]]) -> None:
    settings = Settings(data_dir=Path(env["SWITCHBOARD_DATA_DIR"]))
    db = Database(settings.resolved_database_url())
    try:
        platform = Platform(db)
        owner = await platform.tenants.get(tenant)
        table = PriceTable()
        out = []
        for i, spec in enumerate(events):
            event = UsageEvent(
                request_id=spec.pop("id", f"req_cli_{i}"),
                tenant_id=owner.id,
                key_id=None,
                created_at=spec.pop("at"),
                endpoint="chat.completions",
                model="gpt",
                provider="openai",
                upstream_model="gpt-4o-mini",
                latency_ms=spec.pop("latency", 100),
            )
            charge(
                event, table.lookup("gpt-4o-mini"), spec.pop("tokens_in"), spec.pop("tokens_out")
            )
            for name, value in spec.items():
                setattr(event, name, value)
            out.append(event)
        await BillingSink(platform.usage, platform.plans).write(out)
    finally:
        await db.dispose()


def test_plans_prices_reports_invoices_and_reconcile(env: dict[str, str]) -> None:
    ok(run(env, "tenant", "create", "acme"))
    shown = orjson.loads(ok(run(env, "plan", "show", "--tenant", "acme", "--json")).stdout)
    assert (shown["version"], shown["currency"]) == (None, "USD")
    ok(run(env, "plan", "set", "--tenant", "acme", "--markup", "50", "--allowance", "0.5"))
    ok(run(env, "plan", "set", "--tenant", "acme", "--model-price", "llama=1/2",
           "--cache-hit-price", "0.25"))  # fmt: skip
    plan = orjson.loads(ok(run(env, "plan", "show", "--tenant", "acme", "--json")).stdout)
    assert plan["version"] == 2
    assert plan["cache_hit_per_1m"] == 0.25
    assert plan["markup_percent"] == 50.0  # kept from the version before
    assert plan["model_prices"] == {"llama": {"input_per_1m": 1.0, "output_per_1m": 2.0}}
    bad = run(env, "plan", "set", "--tenant", "acme", "--model-price", "llama=free")
    assert bad.exit_code != 0
    assert "MODEL=INPUT/OUTPUT" in bad.output
    euro_no_rate = run(env, "plan", "set", "--tenant", "acme", "--currency", "usd")
    assert euro_no_rate.exit_code == 1

    prices = orjson.loads(ok(run(env, "prices", "--tenant", "acme", "--json")).stdout)
    by_model = {p["model"]: p for p in prices}
    assert by_model["gpt"]["input_per_1m"] == 0.15
    assert by_model["gpt"]["billed"]["input_per_1m"] == pytest.approx(0.225)
    assert by_model["llama"]["billed"]["basis"] == "model_price"
    assert by_model["mystery"]["priced"] is False
    table = ok(run(env, "prices")).stdout
    assert "NO PRICE" in table
    assert "catalog:gpt-4o-mini@2024-01-01" in table

    now = datetime.now(UTC)
    month = now.strftime("%Y-%m")
    asyncio.run(
        _write(
            env,
            "acme",
            [
                {"at": now, "tokens_in": 1_000_000, "tokens_out": 1_000_000, "latency": 10},
                {"at": now, "tokens_in": 2_000_000, "tokens_out": 0, "latency": 30},
                {"at": now, "tokens_in": 0, "tokens_out": 0, "status": 502, "latency": 50},
            ],
        )
    )
    report = orjson.loads(
        ok(run(env, "usage", "report", "--group-by", "model", "--format", "json")).stdout
    )
    (row,) = report["data"]
    assert (row["model"], row["requests"], row["errors"]) == ("gpt", 3, 1)
    assert row["cost_usd"] == pytest.approx(0.75 + 0.30)
    assert row["billed_amount"] == pytest.approx((0.75 + 0.30) * 1.5)
    assert row["latency_p50_ms"] == 30.0
    assert row["latency_p95_ms"] == pytest.approx(48.0)
    csv_out = ok(run(env, "analytics", "--group-by", "tenant,day", "--format", "csv")).stdout
    assert csv_out.splitlines()[0].startswith("tenant,day,currency,requests")
    assert run(env, "analytics", "--group-by", "secret").exit_code == 2

    invoice = orjson.loads(ok(run(env, "invoice", "--tenant", "acme", "--month", month)).stdout)
    assert invoice["subtotal"] == pytest.approx(1.575)
    assert invoice["allowance_applied"] == 0.5
    assert invoice["total"] == pytest.approx(1.075)
    html = ok(run(env, "invoice", "--tenant", "acme", "--month", month, "--format", "html"))
    assert html.stdout.startswith("<!doctype html>")
    assert "acme" in html.stdout

    clean = orjson.loads(
        ok(run(env, "usage", "reconcile", "--tenant", "acme", "--month", month, "--json")).stdout
    )
    assert (clean["events"], clean["differences"]) == (3, 0)
    asyncio.run(
        _write(
            env,
            "acme",
            [{"id": "req_dirty", "at": now, "tokens_in": 10, "tokens_out": 10, "cost_usd": 9.0}],
        )
    )
    dirty = run(env, "usage", "reconcile", "--tenant", "acme", "--month", month, "--json")
    assert dirty.exit_code == 1
    found = orjson.loads(dirty.stdout)
    assert found["differences"] == 1
    assert found["examples"][0]["cost_usd"]["recorded"] == 9.0
    # The listing of one tenant's requests is still `switchboard usage --tenant`.
    rows = orjson.loads(ok(run(env, "usage", "--tenant", "acme", "--format", "json")).stdout)
    assert len(rows) == 4
    assert run(env, "usage").exit_code == 2

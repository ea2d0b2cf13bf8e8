"""`switchboard lago sync` against the fake Lago: creates the metric and each tenant's customer,
plan and subscription; a second run writes nothing; plan changes become updates; the events the
exporter sends land on the subscription the sync made."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from fakes import lago_upstream
from fakes.server import ServerThread
from switchboard.cli import app
from switchboard.errors import UpstreamRejected
from switchboard.metering.billing import PlanTerms, PlanVersion, default_plan
from switchboard.metering.lago import subscription_id
from switchboard.metering.lago_sync import LagoApi, desired_metric, sync
from switchboard.store.tenants import Tenant

KEY = "lago-sync-key-" + secrets.token_hex(4)
CODE = "llm_usage"


@pytest.fixture
def lago() -> Iterator[ServerThread]:
    with ServerThread(lago_upstream.create_app(KEY)) as server:
        yield server


def state(server: ServerThread) -> Any:
    return server.app.state


def tenant(name: str) -> Tenant:
    return Tenant(f"ten_{secrets.token_hex(4)}", name.lower(), name, "hybrid", datetime.now(UTC))


def plan(t: Tenant, **terms: Any) -> PlanVersion:
    return PlanVersion(1, t.id, datetime.now(UTC), PlanTerms(**terms))


async def run(server: ServerThread, tenants: list[tuple[Tenant, PlanVersion]]) -> Any:
    api = LagoApi(server.url, KEY)
    try:
        return await sync(api, CODE, tenants)
    finally:
        await api.aclose()


async def test_sync_creates_everything_once_then_changes_nothing(lago: ServerThread) -> None:
    acme, globex = tenant("Acme"), tenant("Globex")
    tenants = [
        (acme, plan(acme, currency="EUR", exchange_rate=0.9, included_allowance=50)),
        (globex, default_plan(globex.id)),
    ]
    first = await run(lago, tenants)
    assert sorted(first.created) == sorted(
        [
            f"billable_metric:{CODE}",
            f"customer:{acme.id}",
            f"customer:{globex.id}",
            f"plan:sb_{acme.id}",
            f"plan:sb_{globex.id}",
            f"subscription:sb_{acme.id}",
            f"subscription:sb_{globex.id}",
        ]
    )
    assert first.updated == []
    s = state(lago)
    writes = len(s.writes)
    assert writes == 7

    metric = s.metrics[CODE]
    assert (metric["aggregation_type"], metric["field_name"]) == ("sum_agg", "billed_amount")
    assert s.customers[acme.id]["currency"] == "EUR"
    assert s.customers[acme.id]["name"] == "Acme"
    acme_plan = s.plans[subscription_id(acme.id)]
    assert (acme_plan["interval"], acme_plan["amount_currency"]) == ("monthly", "EUR")
    (charge,) = acme_plan["charges"]
    assert charge["billable_metric_id"] == metric["lago_id"]
    assert charge["charge_model"] == "percentage"
    assert charge["properties"] == {"rate": "100", "free_units_per_total_aggregation": "50.00"}
    sub = s.subscriptions[subscription_id(acme.id)]
    assert (sub["external_customer_id"], sub["plan_code"]) == (acme.id, f"sb_{acme.id}")

    second = await run(lago, tenants)
    assert (second.created, second.updated) == ([], [])
    assert second.unchanged == 7
    assert len(s.writes) == writes  # nothing written the second time


async def test_a_changed_plan_or_name_is_an_update(lago: ServerThread) -> None:
    acme = tenant("Acme")
    await run(lago, [(acme, plan(acme, included_allowance=10))])
    s = state(lago)
    before = len(s.writes)
    renamed = Tenant(acme.id, acme.slug, "Acme Corp", acme.usage_mode, acme.created_at)
    report = await run(lago, [(renamed, plan(acme, included_allowance=25))])
    assert sorted(report.updated) == sorted(
        [f"customer:{acme.id}", f"plan:sb_{acme.id}", f"subscription:sb_{acme.id}"]
    )
    assert report.created == []
    assert (
        s.plans[f"sb_{acme.id}"]["charges"][0]["properties"]["free_units_per_total_aggregation"]
        == "25.00"
    )
    assert s.customers[acme.id]["name"] == "Acme Corp"
    assert len(s.writes) == before + 3
    assert (await run(lago, [(renamed, plan(acme, included_allowance=25))])).changed is False


async def test_a_metric_changed_in_lago_is_put_back(lago: ServerThread) -> None:
    acme = tenant("Acme")
    await run(lago, [(acme, default_plan(acme.id))])
    state(lago).metrics[CODE]["field_name"] = "tokens"  # someone edited it in Lago's UI
    report = await run(lago, [(acme, default_plan(acme.id))])
    assert report.updated == [f"billable_metric:{CODE}"]
    assert state(lago).metrics[CODE]["field_name"] == "billed_amount"


async def test_lago_refusals_surface(lago: ServerThread) -> None:
    api = LagoApi(lago.url, KEY)
    try:
        bad = {**desired_metric("x"), "aggregation_type": "median_agg"}
        with pytest.raises(UpstreamRejected, match="value_is_invalid"):
            await api.write("POST", "/billable_metrics", "billable_metric", bad)
        await api.write("POST", "/billable_metrics", "billable_metric", desired_metric("y"))
        with pytest.raises(UpstreamRejected, match="value_already_exist"):
            await api.write("POST", "/billable_metrics", "billable_metric", desired_metric("y"))
        assert await api.get("/plans/none", "plan") is None
    finally:
        await api.aclose()
    wrong_key = httpx.get(lago.url + "/api/v1/plans/x", headers={"Authorization": "Bearer no"})
    assert wrong_key.status_code == 401


def test_the_cli_syncs_every_tenant(lago: ServerThread, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env |= {"SWITCHBOARD_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()

    def cli(*args: str, **extra: str) -> Any:
        return runner.invoke(app, list(args), env={**env, **extra}, catch_exceptions=False)

    assert cli("tenant", "create", "acme").exit_code == 0
    assert cli("plan", "set", "--tenant", "acme", "--allowance", "5").exit_code == 0
    missing = cli("lago", "sync")
    assert missing.exit_code == 2
    assert "SWITCHBOARD_LAGO_URL" in missing.output
    lago_env = {"SWITCHBOARD_LAGO_URL": lago.url, "SWITCHBOARD_LAGO_API_KEY": KEY}
    first = cli("lago", "sync", "--json", **lago_env)
    assert first.exit_code == 0, first.output
    created = orjson.loads(first.stdout)["created"]
    assert len(created) == 4
    assert f"billable_metric:{CODE}" in created
    again = orjson.loads(cli("lago", "sync", "--json", **lago_env).stdout)
    assert again == {"created": [], "updated": [], "unchanged": 4}

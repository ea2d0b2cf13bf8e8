"""Usage analytics on SQLite and PostgreSQL: grouping, filters, error rates, percentiles
(checked against a reference implementation of percentile_cont), scopes, and the admin API."""

from __future__ import annotations

import csv
import io
import random
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import RunningGateway
from people import add_user, bearer, tokens
from switchboard.auth.roles import Principal
from switchboard.errors import InvalidRequest
from switchboard.metering import analytics
from switchboard.metering.analytics import UsageQuery, UsageScope, parse_group_by, scope_for
from switchboard.metering.usage import UsageEvent
from switchboard.platform import Platform
from switchboard.store.analytics import AnalyticsRepository

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)


def percentile_cont(values: list[int], p: float) -> float:
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


def event(tenant_id: str, at: datetime, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": f"req_{secrets.token_hex(8)}",
        "tenant_id": tenant_id,
        "key_id": None,
        "created_at": at,
        "endpoint": "chat.completions",
        "model": "gpt",
        "provider": "p1",
        "tokens_input": 10,
        "tokens_output": 5,
        "cost_usd": 0.001,
        "billed_amount": 0.002,
        "latency_ms": 100,
        **fields,
    }
    return UsageEvent(**values)


async def test_groups_sums_and_percentiles(platform: Platform) -> None:
    acme = await platform.tenants.create(f"acme-{secrets.token_hex(3)}", usage_mode="hybrid")
    beta = await platform.tenants.create(f"beta-{secrets.token_hex(3)}", usage_mode="hybrid")
    rng = random.Random(7)
    events = []
    latencies: dict[tuple[str, str], list[int]] = {}
    for i in range(57):
        model = "gpt" if i % 3 else "claude"
        latency = rng.randint(5, 5000)
        status = 500 if i % 10 == 0 else 200
        latencies.setdefault((acme.id, model), []).append(latency)
        events.append(
            event(
                acme.id,
                T0 + timedelta(minutes=30 * i),
                model=model,
                latency_ms=latency,
                status=status,
                tokens_input=i,
            )
        )
    events.append(event(beta.id, T0, latency_ms=42))
    await platform.usage.write(events)
    repo = AnalyticsRepository(platform.db)

    rows = await repo.summary(UsageQuery(("tenant", "model")), UsageScope())
    ours = {acme.id, beta.id}  # the PostgreSQL database is shared with other tests
    mine = {(r["tenant"], r["model"]): r for r in rows if r["tenant"] in ours}
    assert set(mine) == {(acme.id, "claude"), (acme.id, "gpt"), (beta.id, "gpt")}
    for key, values in latencies.items():
        row = mine[key]
        assert row["requests"] == len(values)
        assert row["latency_p50_ms"] == pytest.approx(percentile_cont(values, 0.5), abs=1e-3)
        assert row["latency_p95_ms"] == pytest.approx(percentile_cont(values, 0.95), abs=1e-3)
    gpt = mine[(acme.id, "gpt")]
    expected_errors = sum(1 for i in range(57) if i % 3 and i % 10 == 0)
    assert gpt["errors"] == expected_errors
    assert gpt["error_rate"] == pytest.approx(expected_errors / gpt["requests"], abs=1e-6)
    assert gpt["tokens_input"] == sum(i for i in range(57) if i % 3)
    assert gpt["cost_usd"] == pytest.approx(0.001 * gpt["requests"])
    assert gpt["billed_amount"] == pytest.approx(0.002 * gpt["requests"])
    single = mine[(beta.id, "gpt")]
    assert (single["latency_p50_ms"], single["latency_p95_ms"]) == (42.0, 42.0)

    days = await repo.summary(UsageQuery(("day",), tenant_id=acme.id), UsageScope())
    assert [d["day"] for d in days] == ["2026-03-01", "2026-03-02"]
    assert sum(d["requests"] for d in days) == 57
    hours = await repo.summary(
        UsageQuery(("hour",), since=T0, until=T0 + timedelta(hours=1), tenant_id=acme.id),
        UsageScope(),
    )
    assert [(h["hour"], h["requests"]) for h in hours] == [("2026-03-01T10:00", 2)]

    totals = await repo.summary(UsageQuery((), tenant_id=acme.id, model="claude"), UsageScope())
    assert len(totals) == 1
    assert totals[0]["requests"] == 19
    scoped = await repo.summary(UsageQuery(("tenant",)), UsageScope(tenant_id=beta.id))
    assert [(r["tenant"], r["requests"]) for r in scoped] == [(beta.id, 1)]


async def test_department_and_user_scopes(platform: Platform) -> None:
    tenant = await platform.tenants.create(f"corp-{secrets.token_hex(3)}", usage_mode="hybrid")
    sales = await platform.departments.create(tenant.id, "Sales")
    legal = await platform.departments.create(tenant.id, "Legal")
    ann = await platform.users.create(
        tenant.id, "ann@corp.test", role="user", department_id=sales.id
    )
    bob = await platform.users.create(
        tenant.id, "bob@corp.test", role="user", department_id=legal.id
    )
    ann_key, _ = await platform.keys.create(tenant, name="ann", user_id=ann.id)
    bob_key, _ = await platform.keys.create(tenant, name="bob", user_id=bob.id)
    service_key, _ = await platform.keys.create(tenant, name="service")
    await platform.usage.write(
        [event(tenant.id, T0, key_id=ann_key.id) for _ in range(3)]
        + [event(tenant.id, T0, key_id=bob_key.id) for _ in range(2)]
        + [event(tenant.id, T0, key_id=service_key.id)]
    )
    repo = AnalyticsRepository(platform.db)
    by_department = await repo.summary(UsageQuery(("department",)), UsageScope(tenant.id))
    counts = {r["department"]: r["requests"] for r in by_department}
    assert counts == {sales.id: 3, legal.id: 2, None: 1}

    head_of_sales = Principal(
        kind="user",
        role="department_admin",
        user_id="u",
        tenant_id=tenant.id,
        department_id=sales.id,
    )
    sales_only = await repo.summary(UsageQuery(("key",)), scope_for(head_of_sales))
    assert [(r["key"], r["requests"]) for r in sales_only] == [(ann_key.id, 3)]
    as_bob = Principal(kind="user", role="user", user_id=bob.id, tenant_id=tenant.id)
    bobs = await repo.summary(UsageQuery(("tenant",)), scope_for(as_bob))
    assert [r["requests"] for r in bobs] == [2]


def test_scope_for_each_role() -> None:
    assert scope_for(Principal(kind="admin_key", role="platform_admin")).everything
    admin = Principal(kind="user", role="tenant_admin", user_id="u", tenant_id="ten_a")
    assert scope_for(admin) == UsageScope(tenant_id="ten_a")
    # A department admin without a department sees no department's keys.
    lost = Principal(kind="user", role="department_admin", user_id="u", tenant_id="t")
    assert scope_for(lost) == UsageScope(tenant_id="t", department_id="-")
    user = Principal(kind="user", role="user", user_id="u", tenant_id="t")
    assert scope_for(user) == UsageScope(tenant_id="t", key_owner_id="u")


def test_group_by_is_checked() -> None:
    assert parse_group_by("tenant, model,tenant") == ("tenant", "model")
    assert parse_group_by("") == ()
    with pytest.raises(InvalidRequest, match="cannot group by"):
        parse_group_by("tenant;drop table")


def test_csv_and_table_output() -> None:
    query = UsageQuery(("model",))
    rows = [{"model": "gpt", "currency": "USD", "requests": 2, "cost_usd": 0.5}]
    lines = list(csv.reader(io.StringIO(analytics.as_csv(query, rows))))
    assert lines[0] == analytics.columns(query)
    assert lines[1][:4] == ["gpt", "USD", "2", ""]
    assert analytics.as_table(query, rows).splitlines()[1].startswith("gpt")


def test_admin_api(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("analysed")
    slug = gateway.keys["analysed:slug"]
    for model in ("gpt-fake", "gpt-fake", "broken"):
        httpx.post(
            gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
    gateway.usage("analysed", at_least=3)
    reply = gateway.admin(
        "GET", "/admin/v1/analytics", params={"group_by": "model,provider", "tenant": slug}
    )
    assert reply.status_code == 200, reply.text
    data = {r["model"]: r for r in reply.json()["data"]}
    assert data["gpt-fake"]["requests"] == 2
    assert data["gpt-fake"]["errors"] == 0
    assert data["gpt-fake"]["cost_usd"] > 0
    assert data["broken"]["error_rate"] == 1.0
    assert data["gpt-fake"]["latency_p95_ms"] >= data["gpt-fake"]["latency_p50_ms"]
    as_csv = gateway.admin(
        "GET", "/admin/v1/analytics", params={"group_by": "day", "tenant": slug, "format": "csv"}
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[0].startswith("day,currency,requests")
    bad = gateway.admin("GET", "/admin/v1/analytics", params={"group_by": "password"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "group_by"
    bad_until = gateway.admin("GET", "/admin/v1/analytics", params={"until": "later"})
    assert bad_until.json()["error"]["param"] == "until"
    as_tenant = httpx.get(
        gateway.url + "/admin/v1/analytics", headers={"Authorization": f"Bearer {key}"}
    )
    assert as_tenant.status_code == 401


def test_a_tenant_admin_sees_only_their_tenant(gateway: RunningGateway) -> None:
    mine_key = gateway.new_tenant("scoped-mine")
    other_key = gateway.new_tenant("scoped-other")
    for key in (mine_key, other_key):
        httpx.post(
            gateway.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
    gateway.usage("scoped-mine", at_least=1)
    gateway.usage("scoped-other", at_least=1)
    mine, other = gateway.keys["scoped-mine:slug"], gateway.keys["scoped-other:slug"]
    admin = add_user(gateway.settings.resolved_database_url(), mine, "tenant_admin")
    token = tokens(gateway.url, admin)["access_token"]

    def ask(**params: str) -> httpx.Response:
        return httpx.get(
            gateway.url + "/admin/v1/analytics", params=params, headers=bearer(token), timeout=10
        )

    seen = ask(group_by="tenant").json()["data"]
    assert [row["tenant"] for row in seen] == [admin.user.tenant_id]
    assert seen[0]["requests"] == 1
    assert ask(group_by="model", tenant=mine).status_code == 200
    for probe in (other, "no-such-tenant"):
        refused = ask(tenant=probe)
        assert refused.status_code == 403  # the same answer whether it exists or not

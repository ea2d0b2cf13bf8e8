"""Row-level security on PostgreSQL, tested as an attacker would: queries that "forget" their
tenant filter, run in tenant A's scope, still see and change only A's rows; writes of B's rows
are refused by the database. Every table with a tenant column is covered. On SQLite the scope
is a plain transaction (the query layer's filters are the isolation there)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from switchboard.metering.usage import UsageEvent
from switchboard.platform import Platform
from switchboard.policy.tenant_config import TenantConfig
from switchboard.store import Database
from switchboard.store.database import utcnow
from switchboard.store.isolation import ROLE, TENANT_TABLES


@pytest.fixture
async def platform(pg_url: str) -> AsyncIterator[Platform]:
    db = Database(pg_url)
    await db.migrate()
    yield Platform(db)
    await db.dispose()


async def _two_tenants(p: Platform) -> tuple[str, str]:
    ids = []
    run = secrets.token_hex(3)
    for slug in ("alpha", "beta"):
        tenant = await p.tenants.create(f"{slug}-{run}", name=None, usage_mode="hybrid")
        await p.keys.create(tenant, name=f"{slug}-key")
        await p.configs.put(tenant.id, TenantConfig(rate_limit_per_minute=5))
        event = UsageEvent(
            request_id=f"req-{slug}-{run}",
            tenant_id=tenant.id,
            key_id=None,
            created_at=utcnow(),
            endpoint="chat",
            model="m",
            cost_usd=0.5,
        )
        await p.usage.write([event])
        ids.append(tenant.id)
    return ids[0], ids[1]


async def test_every_tenant_table_has_row_level_security(platform: Platform) -> None:
    async with platform.db.engine.connect() as conn:
        with_tenant_column = {
            row[0]
            for row in await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND column_name = 'tenant_id'"
                )
            )
        }
        protected = {
            row[0]: row[1]
            for row in await conn.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            )
        }
        policies = {
            row[0]
            for row in await conn.execute(
                text("SELECT tablename FROM pg_policies WHERE policyname = 'tenant_isolation'")
            )
        }
    missing = sorted(t for t in with_tenant_column | {"tenants"} if not protected.get(t))
    assert not missing, (
        f"tables with a tenant_id column but no row-level security: {missing}. Add each to "
        "TENANT_TABLES in switchboard/store/isolation.py and call isolate() for it in a migration."
    )
    assert set(TENANT_TABLES) <= policies


async def test_a_scoped_query_without_a_filter_sees_only_its_tenant(platform: Platform) -> None:
    alpha, beta = await _two_tenants(platform)
    async with platform.db.tenant_scope(alpha) as conn:
        for table, column in TENANT_TABLES.items():
            rows = (await conn.execute(text(f"SELECT {column} FROM {table}"))).scalars().all()
            assert set(rows) <= {alpha}, f"{table} leaked another tenant's rows"
        assert (await conn.execute(text("SELECT count(*) FROM usage_events"))).scalar() == 1
        assert (await conn.execute(text("SELECT count(*) FROM api_keys"))).scalar() == 1
    async with platform.db.engine.connect() as conn:  # the platform, outside any scope
        both = text("SELECT count(*) FROM api_keys WHERE tenant_id IN (:a, :b)")
        assert (await conn.execute(both, {"a": alpha, "b": beta})).scalar() == 2


async def test_a_scoped_write_of_another_tenants_row_is_refused(platform: Platform) -> None:
    alpha, beta = await _two_tenants(platform)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with platform.db.tenant_scope(alpha) as conn:
            await conn.execute(
                text(
                    "INSERT INTO tenant_configs (tenant_id, config, updated_at) "
                    "VALUES (:t, '{}', now())"
                ),
                {"t": beta},
            )
    async with platform.db.tenant_scope(alpha) as conn:
        renamed = await conn.execute(text("UPDATE api_keys SET name = 'pwned'"))
        assert renamed.rowcount == 1  # only alpha's own key
        gone = await conn.execute(text("DELETE FROM key_policies"))
        assert gone.rowcount == 0
    keys = await platform.keys.list(beta)
    assert [k.name for k in keys] == ["beta-key"]  # untouched


async def test_the_scope_ends_with_its_transaction(platform: Platform) -> None:
    alpha, _ = await _two_tenants(platform)
    async with platform.db.tenant_scope(alpha) as conn:
        assert (await conn.execute(text("SELECT current_user"))).scalar() == ROLE
    async with platform.db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT current_user"))).scalar() != ROLE
        setting = "SELECT current_setting('switchboard.tenant_id', true)"
        assert (await conn.execute(text(setting))).scalar() in (None, "")


async def test_repositories_read_through_the_scope(platform: Platform) -> None:
    alpha, beta = await _two_tenants(platform)
    assert (await platform.configs.get(alpha)).rate_limit_per_minute == 5
    [row] = await platform.usage.query(beta)
    assert row["request_id"].startswith("req-beta-")
    assert len(await platform.keys.list(alpha)) == 1
    results = await asyncio.gather(*(platform.configs.get(t) for t in (alpha, beta) * 10))
    assert all(c.rate_limit_per_minute == 5 for c in results)  # pooled connections reset


async def test_on_sqlite_the_scope_is_a_plain_transaction(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/iso.db")
    await db.migrate()
    try:
        async with db.tenant_scope("anything") as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await db.dispose()

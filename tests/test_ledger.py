"""The usage ledger is append-only on both databases: no UPDATE, no DELETE (no TRUNCATE on
PostgreSQL), while the export bookkeeping beside it stays writable."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from switchboard.metering.usage import UsageEvent
from switchboard.platform import Platform
from switchboard.store.database import utcnow
from switchboard.store.schema import usage_events, usage_exports


async def _one_event(platform: Platform) -> UsageEvent:
    tenant = await platform.tenants.create(f"led-{secrets.token_hex(3)}", usage_mode="hybrid")
    event = UsageEvent(
        request_id=f"req_{secrets.token_hex(8)}",
        tenant_id=tenant.id,
        key_id=None,
        created_at=utcnow(),
        endpoint="chat.completions",
        model="gpt",
        tokens_input=10,
        cost_usd=0.5,
        billed_amount=0.75,
    )
    await platform.usage.write([event])
    return event


@pytest.mark.parametrize(
    "statement",
    [
        lambda rid: (
            sa.update(usage_events).where(usage_events.c.request_id == rid).values(cost_usd=0.0)
        ),
        lambda rid: (
            sa.update(usage_events)
            .where(usage_events.c.request_id == rid)
            .values(billed_amount=0.0, currency="EUR")
        ),
        lambda rid: sa.delete(usage_events).where(usage_events.c.request_id == rid),
    ],
    ids=["update-cost", "update-billed", "delete"],
)
async def test_rows_cannot_change_or_go(platform: Platform, statement: object) -> None:
    event = await _one_event(platform)
    with pytest.raises(DBAPIError, match="append-only"):
        async with platform.db.engine.begin() as conn:
            await conn.execute(statement(event.request_id))  # type: ignore[operator]
    (row,) = await platform.usage.query(event.tenant_id)
    assert (row["cost_usd"], row["billed_amount"], row["currency"]) == (0.5, 0.75, "USD")


async def test_truncate_is_refused_on_postgresql(platform: Platform) -> None:
    event = await _one_event(platform)
    if platform.db.dialect != "postgresql":
        assert platform.db.dialect == "sqlite"  # SQLite has no TRUNCATE; DELETE is refused
        return
    with pytest.raises(DBAPIError, match="append-only"):
        async with platform.db.engine.begin() as conn:
            await conn.execute(sa.text("TRUNCATE usage_events CASCADE"))
    assert len(await platform.usage.query(event.tenant_id)) == 1


async def test_export_bookkeeping_stays_writable(platform: Platform) -> None:
    event = await _one_event(platform)
    async with platform.db.engine.begin() as conn:
        done = await conn.execute(
            sa.update(usage_exports)
            .where(usage_exports.c.request_id == event.request_id)
            .values(state="sent", exported_at=utcnow())
        )
    assert done.rowcount == 1

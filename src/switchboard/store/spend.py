"""What a tenant, one of its keys, or one of its end users spent in a calendar month, read
from the usage ledger. Budgets seed their counters from it (see `limits.budgets`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from switchboard.store.database import Database
from switchboard.store.schema import usage_events


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2026-11"`` → [2026-11-01, 2026-12-01) in UTC."""
    year, number = (int(part) for part in month.split("-"))
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def monthly_spend(
    db: Database,
    tenant_id: str,
    month: str,
    *,
    key_id: str | None = None,
    user_id: str | None = None,
) -> float:
    start, end = month_bounds(month)
    query = select(func.coalesce(func.sum(usage_events.c.cost_usd), 0.0)).where(
        usage_events.c.tenant_id == tenant_id,
        usage_events.c.created_at >= start,
        usage_events.c.created_at < end,
    )
    if key_id is not None:
        query = query.where(usage_events.c.key_id == key_id)
    if user_id is not None:
        query = query.where(usage_events.c.user_id == user_id)
    async with db.tenant_scope(tenant_id) as conn:
        return float((await conn.execute(query)).scalar() or 0.0)

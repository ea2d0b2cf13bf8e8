"""The usage ledger: append-only rows, one per client request, always read per tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from switchboard.metering.usage import UsageEvent
from switchboard.store.database import Database, as_utc
from switchboard.store.schema import usage_events


class UsageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(self, events: Sequence[UsageEvent]) -> None:
        """Append events; a request id already in the ledger is skipped, so replays are safe."""
        if not events:
            return
        stmt: Insert
        if self._db.dialect == "postgresql":
            stmt = pg_insert(usage_events).on_conflict_do_nothing(index_elements=["request_id"])
        elif self._db.dialect == "sqlite":
            stmt = sqlite_insert(usage_events).on_conflict_do_nothing(index_elements=["request_id"])
        else:
            stmt = insert(usage_events)
        async with self._db.engine.begin() as conn:
            await conn.execute(stmt, [e.as_row() for e in events])

    async def query(
        self, tenant_id: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Newest first, for one tenant only."""
        q = select(usage_events).where(usage_events.c.tenant_id == tenant_id)
        if since is not None:
            q = q.where(usage_events.c.created_at >= since)
        q = q.order_by(usage_events.c.created_at.desc()).limit(limit)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            item["created_at"] = as_utc(item["created_at"])
            out.append(item)
        return out

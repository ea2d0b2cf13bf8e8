"""The usage ledger: append-only rows, one per client request, always read per tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import select

from switchboard.metering.usage import UsageEvent
from switchboard.store.database import Database, as_utc
from switchboard.store.schema import usage_events


class UsageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(self, events: Sequence[UsageEvent]) -> None:
        """Append events; a request id already in the ledger is skipped, so replays are safe.

        This is the busiest write in the system, so it goes to the driver as one executemany
        with plain tuples rather than through SQLAlchemy's per-row parameter processing.
        """
        if not events:
            return
        sqlite = self._db.dialect == "sqlite"
        rows = [_row(event, sqlite=sqlite) for event in events]
        async with self._db.engine.begin() as conn:
            await conn.exec_driver_sql(_insert_sql(self._db.dialect), rows)

    async def query(
        self,
        tenant_id: str,
        *,
        since: datetime | None = None,
        limit: int = 10_000,
        key_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first, for one tenant only; only the requests of ``key_ids`` when given
        (a department's or a user's share of the tenant's usage)."""
        q = select(usage_events).where(usage_events.c.tenant_id == tenant_id)
        if key_ids is not None:
            q = q.where(usage_events.c.key_id.in_(list(key_ids)))
        if since is not None:
            # SQLite stores naive UTC text, so compare in UTC whatever offset was given.
            q = q.where(usage_events.c.created_at >= since.astimezone(UTC))
        q = q.order_by(usage_events.c.created_at.desc()).limit(limit)
        async with self._db.tenant_scope(tenant_id) as conn:
            rows = (await conn.execute(q)).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            item["created_at"] = as_utc(item["created_at"])
            out.append(item)
        return out


_COLUMNS = tuple(c.name for c in usage_events.columns)
_values = attrgetter(*_COLUMNS)  # UsageEvent attributes are named after the columns
_CREATED = _COLUMNS.index("created_at")


def _insert_sql(dialect: str) -> str:
    names = ", ".join(_COLUMNS)
    if dialect == "postgresql":
        marks = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    else:
        marks = ", ".join("?" for _ in _COLUMNS)
    # Only our own column names and placeholders go into the text; values are parameters.
    return (
        f"INSERT INTO usage_events ({names}) VALUES ({marks}) "  # noqa: S608
        "ON CONFLICT (request_id) DO NOTHING"
    )


def _row(event: UsageEvent, *, sqlite: bool) -> tuple[Any, ...]:
    row: tuple[Any, ...] = _values(event)
    if sqlite:  # stored the way SQLAlchemy's SQLite DateTime stores it: naive UTC text
        created = event.created_at.astimezone(UTC).replace(tzinfo=None)
        text = created.isoformat(sep=" ", timespec="microseconds")
        row = (*row[:_CREATED], text, *row[_CREATED + 1 :])
    return row

"""The Lago exporter: delivers every usage ledger row to Lago exactly once, from any replica.

Work queue: `usage_exports` (one row per ledger row, added by a trigger as ``pending``). A run
claims a batch of due pending rows in one statement::

    UPDATE usage_exports SET next_export_at = now + lease, attempts = attempts + 1
    WHERE request_id IN (SELECT request_id FROM usage_exports
                         WHERE state = 'pending' AND next_export_at <= now
                         ORDER BY next_export_at LIMIT n FOR UPDATE SKIP LOCKED)
    RETURNING request_id, attempts

On PostgreSQL, ``SKIP LOCKED`` makes concurrent replicas take disjoint rows, and once the
claim commits the rows are not due again until the lease ends, so no other replica sends them
while this one does; a replica that dies mid-send leaves rows that come back when the lease
runs out. On SQLite the statement runs under the database's single write lock, which gives the
same guarantee. The lease must outlast a send (the client's timeout), so it is long.

After the send each row is marked ``sent`` (delivered, or Lago already had it), ``dead`` (Lago
refused it for good; the message is kept and `LagoExporter.redrive` puts it back), or stays
``pending`` with ``next_export_at`` pushed back exponentially (capped). Only `usage_exports` is
ever updated; the ledger itself never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from switchboard.metering.lago import MAX_BATCH, Delivery, LagoClient, Outcome, to_lago_event
from switchboard.settings import Settings
from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import usage_events, usage_exports

log = logging.getLogger("switchboard.export")

PENDING, SENT, DEAD = "pending", "sent", "dead"


@dataclass(slots=True)
class ExportStats:
    """What one `LagoExporter.run_once` did, counted in events."""

    claimed: int = 0
    delivered: int = 0
    duplicates: int = 0  # Lago already had them (counted in delivered too)
    retried: int = 0
    resent: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True)
class ExportBacklog:
    """Events not yet in Lago: ``pending`` (including in flight) and ``dead``."""

    pending: int
    dead: int
    oldest_pending_at: datetime | None

    def lag_seconds(self, now: datetime | None = None) -> float:
        """Age of the oldest pending event; 0 when nothing is pending."""
        if self.oldest_pending_at is None:
            return 0.0
        return max(0.0, ((now or utcnow()) - self.oldest_pending_at).total_seconds())


class LagoExporter:
    def __init__(
        self,
        db: Database,
        client: LagoClient,
        *,
        metric_code: str,
        batch_size: int = MAX_BATCH,
        interval: float = 5.0,
        lease: float = 300.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self._db = db
        self._client = client
        self.metric_code = metric_code
        self.batch_size = batch_size
        self.interval = interval
        self.lease = lease
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> LagoExporter:
        if not settings.lago_url or settings.lago_api_key is None:
            raise ValueError("SWITCHBOARD_LAGO_URL and SWITCHBOARD_LAGO_API_KEY must be set")
        client = LagoClient(settings.lago_url, settings.lago_api_key.get_secret_value())
        return cls(
            db,
            client,
            metric_code=settings.lago_metric_code,
            batch_size=settings.export_batch_size,
            interval=settings.export_interval_seconds,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the loop ---------------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Export until ``stop`` is set: straight on while full batches go through, else every
        ``interval`` seconds. A failing run (database down) is logged and retried."""
        while not stop.is_set():
            busy = False
            try:
                stats = await self.run_once()
                busy = stats.claimed >= self.batch_size and stats.retried == 0
            except Exception:
                log.exception("usage export run failed")
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def run_once(self) -> ExportStats:
        """Claim one batch of due events, send it, and record what became of each event."""
        stats = ExportStats()
        claimed, rows = await self._claim()
        stats.claimed = len(claimed)
        if not claimed:
            return stats
        deadline = time.monotonic() + self.lease / 2
        events = [to_lago_event(row, self.metric_code) for row in rows]
        deliveries = await self._client.send(events)
        if deliveries and deliveries[0].outcome is Outcome.SPLIT:
            # Refused as a whole: one by one, so only the bad events end up dead.
            deliveries = []
            for event in events:
                if time.monotonic() > deadline:  # stay inside the lease; the rest later
                    deliveries.append(Delivery(Outcome.RESEND, "not sent within the lease"))
                    continue
                deliveries.extend(await self._client.send([event]))
        await self._record(rows, deliveries, claimed, stats)
        return stats

    # -- the queue --------------------------------------------------------------------------

    async def _claim(self) -> tuple[dict[str, int], list[Mapping[str, Any]]]:
        now = utcnow()
        due = (
            select(usage_exports.c.request_id)
            .where(usage_exports.c.state == PENDING, usage_exports.c.next_export_at <= now)
            .order_by(usage_exports.c.next_export_at)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(usage_exports)
            .where(usage_exports.c.request_id.in_(due.scalar_subquery()))
            .values(
                next_export_at=now + timedelta(seconds=self.lease),
                attempts=usage_exports.c.attempts + 1,
            )
            .returning(usage_exports.c.request_id, usage_exports.c.attempts)
        )
        async with self._db.engine.begin() as conn:
            claimed: dict[str, int] = dict((await conn.execute(claim)).all())
            if not claimed:
                return {}, []
            rows = await _ledger_rows(conn, list(claimed))
        return claimed, rows

    async def _record(
        self,
        rows: Sequence[Mapping[str, Any]],
        deliveries: Sequence[Delivery],
        claimed: Mapping[str, int],
        stats: ExportStats,
    ) -> None:
        now = utcnow()
        sent: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        later: list[dict[str, Any]] = []
        for row, delivery in zip(rows, deliveries, strict=True):
            rid = row["request_id"]
            if delivery.delivered:
                stats.delivered += 1
                stats.duplicates += delivery.outcome is Outcome.DUPLICATE
                sent.append({"rid": rid})
            elif delivery.outcome is Outcome.DEAD:
                stats.dead += 1
                dead.append({"rid": rid, "msg": delivery.message})
                log.warning("usage event %s dead-lettered: %s", rid, delivery.message)
            elif delivery.outcome is Outcome.RESEND:
                stats.resent += 1
                later.append({"rid": rid, "due": now, "msg": None})
            else:
                stats.retried += 1
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (claimed[rid] - 1))
                later.append(
                    {"rid": rid, "due": now + timedelta(seconds=delay), "msg": delivery.message}
                )
        mine = (usage_exports.c.request_id == bindparam("rid")) & (usage_exports.c.state == PENDING)
        async with self._db.engine.begin() as conn:
            if sent:
                await conn.execute(
                    update(usage_exports)
                    .where(mine)
                    .values(state=SENT, exported_at=now, error=None),
                    sent,
                )
            if dead:
                await conn.execute(
                    update(usage_exports).where(mine).values(state=DEAD, error=bindparam("msg")),
                    dead,
                )
            if later:
                await conn.execute(
                    update(usage_exports)
                    .where(mine)
                    .values(next_export_at=bindparam("due"), error=bindparam("msg")),
                    later,
                )
        if stats.retried:
            log.info("Lago did not take %d usage events; retrying later", stats.retried)

    # -- visibility and re-drive ------------------------------------------------------------

    async def backlog(self) -> ExportBacklog:
        """Pending (and dead) counts and the time of the oldest pending event (the lag)."""
        q = (
            select(usage_exports.c.state, func.count(), func.min(usage_exports.c.event_at))
            .where(usage_exports.c.state.in_((PENDING, DEAD)))
            .group_by(usage_exports.c.state)
        )
        async with self._db.engine.connect() as conn:
            found = {state: (count, oldest) for state, count, oldest in (await conn.execute(q))}
        pending, oldest = found.get(PENDING, (0, None))
        return ExportBacklog(
            pending=int(pending),
            dead=int(found.get(DEAD, (0, None))[0]),
            oldest_pending_at=as_utc(oldest),
        )

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered events, oldest first, with Lago's message."""
        q = (
            select(
                usage_exports.c.request_id,
                usage_events.c.tenant_id,
                usage_exports.c.event_at,
                usage_exports.c.attempts,
                usage_exports.c.error,
            )
            .join(usage_events, usage_events.c.request_id == usage_exports.c.request_id)
            .where(usage_exports.c.state == DEAD)
            .order_by(usage_exports.c.event_at)
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [{**row, "event_at": as_utc(row["event_at"])} for row in rows]

    async def redrive(self, request_ids: Sequence[str] | None = None) -> int:
        """Put dead events (all, or those named) back to pending, due now. Returns how many."""
        stmt = (
            update(usage_exports)
            .where(usage_exports.c.state == DEAD)
            .values(state=PENDING, attempts=0, next_export_at=utcnow(), error=None)
        )
        if request_ids is not None:
            stmt = stmt.where(usage_exports.c.request_id.in_(list(request_ids)))
        async with self._db.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount


async def _ledger_rows(conn: AsyncConnection, request_ids: list[str]) -> list[Mapping[str, Any]]:
    q = (
        select(usage_events)
        .where(usage_events.c.request_id.in_(request_ids))
        .order_by(usage_events.c.created_at)
    )
    return [dict(row) for row in (await conn.execute(q)).mappings()]

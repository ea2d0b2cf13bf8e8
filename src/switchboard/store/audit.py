"""The audit log: append-only rows of who did what, when, from where.

Rows are only ever inserted (database triggers refuse UPDATE and DELETE). Reads are scoped:
a tenant id filter, or none for platform admins. Paging is by id: ``before`` is the cursor,
the id of the last row of the previous page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import insert, select

from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import audit_log


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor_kind: str
    actor_id: str | None
    actor_role: str | None
    tenant_id: str | None
    action: str
    target: str | None
    outcome: str
    details: dict[str, Any]
    client_ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    tenant_id: str | None = None  # None: every tenant (platform admins only)
    actor_id: str | None = None
    action: str | None = None  # exact, or a prefix ending in '.' (e.g. "auth.")
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None  # cursor: rows with a smaller id
    limit: int = 100


def _entry(row: Mapping[Any, Any]) -> AuditEntry:
    at = as_utc(row["at"])
    assert at is not None
    return AuditEntry(
        id=int(row["id"]),
        at=at,
        actor_kind=row["actor_kind"],
        actor_id=row["actor_id"],
        actor_role=row["actor_role"],
        tenant_id=row["tenant_id"],
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        details=orjson.loads(row["details"]) if row["details"] else {},
        client_ip=row["client_ip"],
        user_agent=row["user_agent"],
    )


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self,
        *,
        actor_kind: str,
        actor_id: str | None,
        actor_role: str | None,
        tenant_id: str | None,
        action: str,
        target: str | None = None,
        outcome: str = "ok",
        details: Mapping[Any, Any] | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        values = {
            "at": utcnow(),
            "actor_kind": actor_kind,
            "actor_id": actor_id,
            "actor_role": actor_role,
            "tenant_id": tenant_id,
            "action": action,
            "target": target,
            "outcome": outcome,
            "details": orjson.dumps(dict(details)).decode() if details else None,
            "client_ip": client_ip,
            "user_agent": (user_agent or "")[:300] or None,
        }
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(audit_log).values(values))

    async def query(self, where: AuditFilter) -> list[AuditEntry]:
        """Newest first."""
        query = select(audit_log)
        if where.tenant_id is not None:
            query = query.where(audit_log.c.tenant_id == where.tenant_id)
        if where.actor_id is not None:
            query = query.where(audit_log.c.actor_id == where.actor_id)
        if where.action is not None:
            if where.action.endswith("."):
                query = query.where(audit_log.c.action.startswith(where.action, autoescape=True))
            else:
                query = query.where(audit_log.c.action == where.action)
        if where.since is not None:
            query = query.where(audit_log.c.at >= where.since.astimezone(UTC))
        if where.until is not None:
            query = query.where(audit_log.c.at < where.until.astimezone(UTC))
        if where.before is not None:
            query = query.where(audit_log.c.id < where.before)
        query = query.order_by(audit_log.c.id.desc()).limit(where.limit)
        async with self._db.reading(where.tenant_id) as conn:
            return [_entry(r) for r in (await conn.execute(query)).mappings()]

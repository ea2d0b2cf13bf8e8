"""Tenant plan versions: append-only, each in force from its ``effective_from`` on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from switchboard.errors import InvalidRequest
from switchboard.metering.billing import PlanTerms, PlanVersion, default_plan, plan_at
from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import tenant_plans

# A plan may not start in the past (that would re-bill recorded usage); this much clock skew
# between the caller and the database is tolerated.
_SKEW = timedelta(seconds=60)


class PlanRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(
        self, tenant_id: str, terms: PlanTerms, *, effective_from: datetime | None = None
    ) -> PlanVersion:
        """Add a plan version in force from ``effective_from`` (now by default, never earlier)."""
        now = utcnow()
        start = now if effective_from is None else effective_from
        if start.tzinfo is None:
            raise InvalidRequest("'effective_from' needs a UTC offset", param="effective_from")
        if start < now - _SKEW:
            raise InvalidRequest(
                "'effective_from' is in the past: a plan change never re-bills recorded usage",
                param="effective_from",
            )
        values = {
            "tenant_id": tenant_id,
            "effective_from": start,
            "terms": terms.model_dump_json(),
            "created_at": now,
        }
        async with self._db.engine.begin() as conn:
            result = await conn.execute(insert(tenant_plans).values(values))
            new_id = result.inserted_primary_key
        assert new_id is not None
        return PlanVersion(int(new_id[0]), tenant_id, start, terms)

    async def history(self, tenant_id: str) -> list[PlanVersion]:
        """The tenant's plan versions, oldest first."""
        return (await self.histories([tenant_id])).get(tenant_id, [])

    async def histories(self, tenant_ids: Sequence[str]) -> dict[str, list[PlanVersion]]:
        """Plan versions of each of the tenants, oldest first (tenants with none are absent)."""
        if not tenant_ids:
            return {}
        q = (
            select(tenant_plans)
            .where(tenant_plans.c.tenant_id.in_(list(tenant_ids)))
            .order_by(tenant_plans.c.effective_from, tenant_plans.c.id)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        out: dict[str, list[PlanVersion]] = {}
        for row in rows:
            out.setdefault(row["tenant_id"], []).append(_version(row))
        return out

    async def at(self, tenant_id: str, when: datetime | None = None) -> PlanVersion:
        """The plan in force at ``when`` (now by default); the default plan if none was set."""
        history = await self.history(tenant_id)
        if not history:
            return default_plan(tenant_id)
        return plan_at(history, tenant_id, when or utcnow())


def _version(row: Mapping[Any, Any]) -> PlanVersion:
    return PlanVersion(
        int(row["id"]),
        row["tenant_id"],
        as_utc(row["effective_from"]),
        PlanTerms.model_validate_json(row["terms"]),
    )

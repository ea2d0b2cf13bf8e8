"""Each tenant's policy document (guardrails, allowed models, cache, limits), one row a tenant."""

from __future__ import annotations

import orjson
from sqlalchemy import select

from switchboard.policy.tenant_config import TenantConfig
from switchboard.store.database import Database, utcnow
from switchboard.store.schema import tenant_configs


class TenantConfigRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant_id: str) -> TenantConfig:
        """The tenant's config; the defaults (nothing enforced) when none was ever stored."""
        query = select(tenant_configs.c.config).where(tenant_configs.c.tenant_id == tenant_id)
        async with self._db.tenant_scope(tenant_id) as conn:
            raw = (await conn.execute(query)).scalar()
        if raw is None:
            return TenantConfig()
        return TenantConfig.model_validate(orjson.loads(raw))

    async def put(self, tenant_id: str, config: TenantConfig) -> None:
        values = {
            "tenant_id": tenant_id,
            "config": config.model_dump_json(),
            "updated_at": utcnow(),
        }
        await self._db.upsert(tenant_configs, values, "tenant_id", ("config", "updated_at"))

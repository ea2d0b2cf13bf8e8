"""Each API key's own policy (limits, monthly budget, allowed models), one row a key at most."""

from __future__ import annotations

import orjson
from sqlalchemy import delete, select

from switchboard.policy.limit_set import NO_KEY_POLICY, KeyPolicy
from switchboard.store.database import Database, utcnow
from switchboard.store.schema import key_policies


class KeyPolicyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant_id: str, key_id: str) -> KeyPolicy:
        """The key's policy; no limits of its own when none was stored."""
        query = select(key_policies.c.policy).where(
            key_policies.c.tenant_id == tenant_id, key_policies.c.key_id == key_id
        )
        async with self._db.tenant_scope(tenant_id) as conn:
            raw = (await conn.execute(query)).scalar()
        if raw is None:
            return NO_KEY_POLICY
        return KeyPolicy.model_validate(orjson.loads(raw))

    async def put(self, tenant_id: str, key_id: str, policy: KeyPolicy) -> None:
        if policy == NO_KEY_POLICY:
            async with self._db.tenant_scope(tenant_id) as conn:
                await conn.execute(
                    delete(key_policies).where(
                        key_policies.c.tenant_id == tenant_id, key_policies.c.key_id == key_id
                    )
                )
            return
        values = {
            "key_id": key_id,
            "tenant_id": tenant_id,
            "policy": policy.model_dump_json(exclude_defaults=True),
            "updated_at": utcnow(),
        }
        await self._db.upsert(key_policies, values, "key_id", ("policy", "updated_at"))

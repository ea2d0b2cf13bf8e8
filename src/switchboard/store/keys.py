"""API keys. The secret is shown once at creation; only its SHA-256 is stored.

A key looks like ``sk-sb-<43 url-safe characters>`` (256 random bits). Because the secret is
random rather than chosen by a person, a fast hash is as safe as a slow one and lets the hot
path verify a key in microseconds.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import RowMapping

from switchboard.errors import NotFound
from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import api_keys, tenants, users
from switchboard.store.tenants import Tenant, _tenant

KEY_PREFIX = "sk-sb-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    user_id: str | None = None  # the owner; None for a tenant's service key

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _key(row: RowMapping) -> ApiKey:
    created = as_utc(row["created_at"])
    assert created is not None
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=created,
        expires_at=as_utc(row["expires_at"]),
        revoked_at=as_utc(row["revoked_at"]),
        user_id=row["user_id"],
    )


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        tenant: Tenant,
        *,
        name: str | None = None,
        expires_in_days: float | None = None,
        user_id: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Return the stored key and its secret; the secret is never retrievable again.

        ``user_id`` makes it that user's key (the caller checks the user is in ``tenant``);
        without it the key is the tenant's service key."""
        secret = new_secret()
        now = utcnow()
        key = ApiKey(
            id=f"key_{secrets.token_hex(8)}",
            tenant_id=tenant.id,
            name=name or "default",
            prefix=secret[: len(KEY_PREFIX) + 4],
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
            revoked_at=None,
            user_id=user_id,
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    tenant_id=key.tenant_id,
                    name=key.name,
                    prefix=key.prefix,
                    secret_hash=hash_secret(secret),
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=None,
                    user_id=user_id,
                )
            )
        return key, secret

    async def list(
        self, tenant_id: str, *, department_id: str | None = None, user_id: str | None = None
    ) -> list[ApiKey]:
        """A tenant's keys; narrowed to one department's users' keys, or to one user's."""
        query = select(api_keys).where(api_keys.c.tenant_id == tenant_id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        if department_id is not None:
            members = select(users.c.id).where(
                users.c.tenant_id == tenant_id, users.c.department_id == department_id
            )
            query = query.where(api_keys.c.user_id.in_(members))
        query = query.order_by(api_keys.c.created_at, api_keys.c.id)
        async with self._db.tenant_scope(tenant_id) as conn:
            return [_key(r) for r in (await conn.execute(query)).mappings()]

    async def get(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey:
        """``tenant_id`` scopes the lookup; only the platform admin passes None."""
        query = select(api_keys).where(api_keys.c.id == key_id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return _key(row)

    async def revoke(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey:
        key = await self.get(key_id, tenant_id=tenant_id)
        if key.revoked_at is None:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key.id, api_keys.c.tenant_id == key.tenant_id)
                    .values(revoked_at=utcnow())
                )
        return await self.get(key.id, tenant_id=key.tenant_id)

    async def find_by_secret(self, secret: str) -> tuple[ApiKey, Tenant] | None:
        """The authentication lookup: the key and its tenant, or None when unknown."""
        query = (
            select(api_keys, tenants.c.slug, tenants.c.usage_mode)
            .add_columns(tenants.c.name.label("tenant_name"))
            .add_columns(tenants.c.created_at.label("tenant_created_at"))
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .where(api_keys.c.secret_hash == hash_secret(secret))
        )
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        tenant = _tenant(
            {
                "id": row["tenant_id"],
                "slug": row["slug"],
                "name": row["tenant_name"],
                "usage_mode": row["usage_mode"],
                "created_at": row["tenant_created_at"],
            }
        )
        return _key(row), tenant

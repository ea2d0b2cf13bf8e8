"""Tenants: the customers one Switchboard serves."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from switchboard.errors import InvalidRequest, NotFound
from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import tenants

UsageMode = Literal["local", "external", "hybrid"]
USAGE_MODES: tuple[str, ...] = get_args(UsageMode)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    slug: str
    name: str
    usage_mode: UsageMode
    created_at: datetime


def _tenant(row: Mapping[Any, Any]) -> Tenant:
    created = as_utc(row["created_at"])
    assert created is not None
    return Tenant(row["id"], row["slug"], row["name"], row["usage_mode"], created)


def check_usage_mode(value: str) -> UsageMode:
    if value not in USAGE_MODES:
        raise InvalidRequest(
            f"usage_mode must be one of {', '.join(USAGE_MODES)}", param="usage_mode"
        )
    return value  # type: ignore[return-value]


class TenantRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, slug: str, *, name: str | None = None, usage_mode: str) -> Tenant:
        if not _SLUG.match(slug):
            raise InvalidRequest(
                "tenant slug must be 1-63 lowercase letters, digits or dashes", param="slug"
            )
        tenant = Tenant(
            id=f"ten_{secrets.token_hex(8)}",
            slug=slug,
            name=name or slug,
            usage_mode=check_usage_mode(usage_mode),
            created_at=utcnow(),
        )
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(tenants).values(
                        id=tenant.id,
                        slug=tenant.slug,
                        name=tenant.name,
                        usage_mode=tenant.usage_mode,
                        created_at=tenant.created_at,
                    )
                )
        except IntegrityError as exc:
            raise InvalidRequest(f"tenant {slug!r} already exists", param="slug") from exc
        return tenant

    async def list(self) -> list[Tenant]:
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(select(tenants).order_by(tenants.c.slug))).mappings()
            return [_tenant(r) for r in rows]

    async def get(self, slug_or_id: str) -> Tenant:
        column = tenants.c.id if slug_or_id.startswith("ten_") else tenants.c.slug
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(tenants).where(column == slug_or_id))).mappings()
            found = row.first()
        if found is None:
            raise NotFound(f"no tenant {slug_or_id!r}", param="tenant")
        return _tenant(found)

    async def update(
        self, slug_or_id: str, *, name: str | None = None, usage_mode: str | None = None
    ) -> Tenant:
        tenant = await self.get(slug_or_id)
        values: dict[str, str] = {}
        if name is not None:
            values["name"] = name
        if usage_mode is not None:
            values["usage_mode"] = check_usage_mode(usage_mode)
        if values:
            async with self._db.engine.begin() as conn:
                await conn.execute(update(tenants).where(tenants.c.id == tenant.id).values(values))
        return await self.get(tenant.id)

"""A tenant's identity providers, one row each; the secret encrypted with the platform key.

Every query filters on the tenant and runs in its scope (row-level security on PostgreSQL)."""

from __future__ import annotations

import secrets
from typing import Final

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from switchboard.auth.identity_providers import NAME, IdentityProvider, ProviderDocument
from switchboard.auth.secretbox import SecretBox
from switchboard.errors import InvalidRequest, NotFound
from switchboard.store.database import Database, utcnow
from switchboard.store.schema import identity_providers as table


class _Keep:
    """Leave the stored secret as it is (an update that does not mention it)."""


KEEP: Final = _Keep()


class IdentityProviderRepository:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    def _provider(self, row: RowMapping) -> IdentityProvider:
        stored = row["secret"]
        return IdentityProvider(
            id=row["id"],
            tenant_id=row["tenant_id"],
            name=row["name"],
            document=ProviderDocument.model_validate_json(row["document"]),
            secret=self._box.decrypt(stored) if stored is not None else None,
        )

    async def create(
        self, tenant_id: str, name: str, document: ProviderDocument, secret: str | None
    ) -> IdentityProvider:
        if not NAME.match(name):
            raise InvalidRequest(
                "provider name must be 1-63 lowercase letters, digits or dashes", param="name"
            )
        now = utcnow()
        provider_id = f"idp_{secrets.token_hex(8)}"
        try:
            async with self._db.tenant_scope(tenant_id) as conn:
                await conn.execute(
                    insert(table).values(
                        id=provider_id,
                        tenant_id=tenant_id,
                        name=name,
                        kind=document.settings.kind,
                        document=document.model_dump_json(),
                        secret=self._box.encrypt(secret) if secret is not None else None,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            raise InvalidRequest(
                f"this tenant already has an identity provider named {name!r}", param="name"
            ) from exc
        return IdentityProvider(provider_id, tenant_id, name, document, secret)

    async def list(self, tenant_id: str) -> list[IdentityProvider]:
        query = select(table).where(table.c.tenant_id == tenant_id).order_by(table.c.name)
        async with self._db.tenant_scope(tenant_id) as conn:
            return [self._provider(r) for r in (await conn.execute(query)).mappings()]

    async def get(self, tenant_id: str, name: str) -> IdentityProvider:
        query = select(table).where(table.c.tenant_id == tenant_id, table.c.name == name)
        async with self._db.tenant_scope(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"no identity provider {name!r} in this tenant", param="provider")
        return self._provider(row)

    async def update(
        self,
        tenant_id: str,
        name: str,
        document: ProviderDocument,
        secret: str | _Keep | None = KEEP,
    ) -> IdentityProvider:
        current = await self.get(tenant_id, name)
        if document.settings.kind != current.kind:
            raise InvalidRequest("a provider's kind cannot change; create a new one")
        values: dict[str, object] = {"document": document.model_dump_json(), "updated_at": utcnow()}
        if not isinstance(secret, _Keep):
            values["secret"] = self._box.encrypt(secret) if secret is not None else None
        async with self._db.tenant_scope(tenant_id) as conn:
            await conn.execute(
                update(table)
                .where(table.c.tenant_id == tenant_id, table.c.id == current.id)
                .values(values)
            )
        return await self.get(tenant_id, name)

    async def delete(self, tenant_id: str, name: str) -> None:
        async with self._db.tenant_scope(tenant_id) as conn:
            result = await conn.execute(
                delete(table).where(table.c.tenant_id == tenant_id, table.c.name == name)
            )
        if result.rowcount == 0:
            raise NotFound(f"no identity provider {name!r} in this tenant", param="provider")

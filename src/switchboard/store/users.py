"""People who sign in: platform admins (no tenant) and each tenant's users.

E-mail addresses are stored lower-cased and are unique per tenant. The password hash is never
part of a `User`; only `credentials` hands it out, to the login check.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from switchboard.auth.roles import Role, Source, check_role
from switchboard.errors import InvalidRequest, NotFound
from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import api_keys, sessions, users

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


@dataclass(frozen=True, slots=True)
class User:
    id: str
    tenant_id: str | None
    department_id: str | None
    email: str
    name: str | None
    role: Role
    source: Source
    external_subject: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


def normalize_email(value: object) -> str:
    if not isinstance(value, str) or not _EMAIL.match(value.strip()):
        raise InvalidRequest("'email' must be an e-mail address", param="email")
    return value.strip().lower()


def _user(row: Mapping[Any, Any]) -> User:
    created, updated = as_utc(row["created_at"]), as_utc(row["updated_at"])
    assert created is not None
    assert updated is not None
    return User(
        id=row["id"],
        tenant_id=row["tenant_id"],
        department_id=row["department_id"],
        email=row["email"],
        name=row["name"],
        role=row["role"],
        source=row["source"],
        external_subject=row["external_subject"],
        disabled=bool(row["disabled"]),
        created_at=created,
        updated_at=updated,
        last_login_at=as_utc(row["last_login_at"]),
    )


def _in_tenant(query: Select[Any], tenant_id: str | None) -> Select[Any]:
    """Tenant users for a tenant id; platform admins (tenant_id IS NULL) for None."""
    if tenant_id is None:
        return query.where(users.c.tenant_id.is_(None))
    return query.where(users.c.tenant_id == tenant_id)


class UserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        tenant_id: str | None,
        email: str,
        *,
        role: str,
        name: str | None = None,
        department_id: str | None = None,
        password_hash: str | None = None,
        source: Source = "local",
        external_subject: str | None = None,
    ) -> User:
        checked = check_role(role)
        if (checked == "platform_admin") != (tenant_id is None):
            raise InvalidRequest(
                "platform admins belong to no tenant; every other role belongs to one",
                param="role",
            )
        if checked == "department_admin" and department_id is None:
            raise InvalidRequest("a department admin needs a department", param="department")
        now = utcnow()
        values = {
            "id": f"usr_{secrets.token_hex(8)}",
            "tenant_id": tenant_id,
            "department_id": department_id,
            "email": normalize_email(email),
            "name": name,
            "role": checked,
            "password_hash": password_hash,
            "source": source,
            "external_subject": external_subject,
            "disabled": False,
            "created_at": now,
            "updated_at": now,
            "last_login_at": None,
        }
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(insert(users).values(values))
        except IntegrityError as exc:
            raise InvalidRequest(
                f"a user with e-mail {values['email']!r} already exists", param="email"
            ) from exc
        return _user(values)

    async def get(self, tenant_id: str | None, user_id: str) -> User:
        query = _in_tenant(select(users).where(users.c.id == user_id), tenant_id)
        async with self._db.reading(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"no user {user_id!r}", param="user_id")
        return _user(row)

    async def get_any(self, user_id: str) -> User | None:
        """A user by id whatever its tenant: only for checking a signed session's owner."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings()
            found = row.first()
        return None if found is None else _user(found)

    async def list(
        self,
        tenant_id: str | None,
        *,
        department_id: str | None = None,
        user_id: str | None = None,
    ) -> list[User]:
        query = _in_tenant(select(users), tenant_id)
        if department_id is not None:
            query = query.where(users.c.department_id == department_id)
        if user_id is not None:
            query = query.where(users.c.id == user_id)
        async with self._db.reading(tenant_id) as conn:
            rows = (await conn.execute(query.order_by(users.c.email))).mappings()
            return [_user(r) for r in rows]

    async def find_by_email(self, tenant_id: str | None, email: str) -> User | None:
        query = _in_tenant(select(users).where(users.c.email == email.strip().lower()), tenant_id)
        async with self._db.reading(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _user(row)

    async def find_external(self, tenant_id: str, source: Source, subject: str) -> User | None:
        query = select(users).where(
            users.c.tenant_id == tenant_id,
            users.c.source == source,
            users.c.external_subject == subject,
        )
        async with self._db.reading(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _user(row)

    async def credentials(
        self, tenant_id: str | None, email: str
    ) -> tuple[User, str | None] | None:
        """The login lookup: the user and their password hash (None for external users)."""
        query = _in_tenant(select(users).where(users.c.email == email.strip().lower()), tenant_id)
        async with self._db.reading(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else (_user(row), row["password_hash"])

    async def update(self, tenant_id: str | None, user_id: str, **values: Any) -> User:
        """Change fields (email, name, role, department_id, password_hash, disabled, ...)."""
        if "email" in values:
            values["email"] = normalize_email(values["email"])
        if "role" in values:
            values["role"] = check_role(values["role"])
        await self.get(tenant_id, user_id)
        values["updated_at"] = utcnow()
        statement = update(users).where(users.c.id == user_id)
        statement = (
            statement.where(users.c.tenant_id.is_(None))
            if tenant_id is None
            else statement.where(users.c.tenant_id == tenant_id)
        )
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(statement.values(values))
        except IntegrityError as exc:
            raise InvalidRequest("that change conflicts with another user", param="email") from exc
        return await self.get(tenant_id, user_id)

    async def touch_login(self, user_id: str) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(users).where(users.c.id == user_id).values(last_login_at=utcnow())
            )

    async def delete(self, tenant_id: str | None, user_id: str) -> None:
        """Delete a user (``tenant_id`` None: a platform admin): their sessions go with them,
        their keys are revoked and kept (as the tenant's) so usage history still names them."""
        await self.get(tenant_id, user_id)
        async with self._db.engine.begin() as conn:
            if tenant_id is not None:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.tenant_id == tenant_id, api_keys.c.user_id == user_id)
                    .values(user_id=None, revoked_at=func.coalesce(api_keys.c.revoked_at, utcnow()))
                )
            await conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
            owner = (
                users.c.tenant_id.is_(None) if tenant_id is None else users.c.tenant_id == tenant_id
            )
            await conn.execute(delete(users).where(users.c.id == user_id, owner))

"""Departments: named groups of users inside one tenant."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from switchboard.errors import InvalidRequest, NotFound
from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.schema import departments, users


@dataclass(frozen=True, slots=True)
class Department:
    id: str
    tenant_id: str
    name: str
    created_at: datetime


def _department(row: Mapping[Any, Any]) -> Department:
    created = as_utc(row["created_at"])
    assert created is not None
    return Department(row["id"], row["tenant_id"], row["name"], created)


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequest("department name must be 1-200 characters", param="name")
    return name


class DepartmentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant_id: str, name: str) -> Department:
        department = Department(
            f"dep_{secrets.token_hex(8)}", tenant_id, _check_name(name), utcnow()
        )
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(departments).values(
                        id=department.id,
                        tenant_id=tenant_id,
                        name=department.name,
                        created_at=department.created_at,
                    )
                )
        except IntegrityError as exc:
            raise InvalidRequest(f"department {name!r} already exists", param="name") from exc
        return department

    async def list(self, tenant_id: str, *, department_id: str | None = None) -> list[Department]:
        query = select(departments).where(departments.c.tenant_id == tenant_id)
        if department_id is not None:
            query = query.where(departments.c.id == department_id)
        async with self._db.reading(tenant_id) as conn:
            rows = (await conn.execute(query.order_by(departments.c.name))).mappings()
            return [_department(r) for r in rows]

    async def get(self, tenant_id: str, department_id: str) -> Department:
        query = select(departments).where(
            departments.c.tenant_id == tenant_id, departments.c.id == department_id
        )
        async with self._db.reading(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"no department {department_id!r}", param="department_id")
        return _department(row)

    async def find_by_name(self, tenant_id: str, name: str) -> Department | None:
        query = select(departments).where(
            departments.c.tenant_id == tenant_id, departments.c.name == name.strip()
        )
        async with self._db.reading(tenant_id) as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _department(row)

    async def ensure(self, tenant_id: str, name: str) -> Department:
        """The department called ``name``, created when missing (safe under races)."""
        found = await self.find_by_name(tenant_id, name)
        if found is not None:
            return found
        try:
            return await self.create(tenant_id, name)
        except InvalidRequest:  # created by someone else in between
            again = await self.find_by_name(tenant_id, name)
            if again is None:
                raise
            return again

    async def rename(self, tenant_id: str, department_id: str, name: str) -> Department:
        await self.get(tenant_id, department_id)
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(departments)
                    .where(departments.c.tenant_id == tenant_id, departments.c.id == department_id)
                    .values(name=_check_name(name))
                )
        except IntegrityError as exc:
            raise InvalidRequest(f"department {name!r} already exists", param="name") from exc
        return await self.get(tenant_id, department_id)

    async def delete(self, tenant_id: str, department_id: str) -> None:
        """Only an empty department can go: its users must move or be deleted first."""
        await self.get(tenant_id, department_id)
        members = (
            select(func.count())
            .select_from(users)
            .where(users.c.tenant_id == tenant_id, users.c.department_id == department_id)
        )
        async with self._db.engine.begin() as conn:
            if (await conn.execute(members)).scalar_one():
                raise InvalidRequest(
                    "the department still has users; move or delete them first",
                    code="department_not_empty",
                )
            await conn.execute(
                delete(departments).where(
                    departments.c.tenant_id == tenant_id, departments.c.id == department_id
                )
            )

"""Test helpers: users and departments written straight into a gateway's database, and
sign-in through its /auth/v1 routes."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

from switchboard.auth.passwords import hash_password
from switchboard.platform import Platform
from switchboard.store import Database
from switchboard.store.users import User

PASSWORD = "correct horse battery staple"


@dataclass
class Person:
    user: User
    password: str
    tenant: str | None  # slug


def add_user(
    database_url: str,
    tenant: str | None,
    role: str,
    *,
    department: str | None = None,
    password: str = PASSWORD,
    email: str | None = None,
) -> Person:
    """A local user (with a department created on demand) in ``tenant`` (slug; None for a
    platform admin)."""

    async def run() -> User:
        db = Database(database_url)
        try:
            p = Platform(db)
            tenant_id = (await p.tenants.get(tenant)).id if tenant else None
            department_id = None
            if department is not None:
                assert tenant_id is not None
                department_id = (await p.departments.ensure(tenant_id, department)).id
            return await p.users.create(
                tenant_id,
                email or f"{role}-{secrets.token_hex(4)}@example.com",
                role=role,
                department_id=department_id,
                password_hash=await hash_password(password),
            )
        finally:
            await db.dispose()

    return Person(asyncio.run(run()), password, tenant)


def login(base_url: str, person: Person, **extra: Any) -> httpx.Response:
    tenant = extra.pop("tenant", person.tenant)
    return login_as(base_url, tenant, person.user.email, person.password, **extra)


def login_as(
    base_url: str, tenant: str | None, email: str, password: str, **extra: Any
) -> httpx.Response:
    body: dict[str, Any] = {"email": email, "password": password}
    if tenant is not None:
        body["tenant"] = tenant
    return httpx.post(base_url + "/auth/v1/login", json={**body, **extra}, timeout=10)


def tokens(base_url: str, person: Person) -> dict[str, Any]:
    response = login(base_url, person)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

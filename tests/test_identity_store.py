"""Identity tables on SQLite and PostgreSQL: departments, users, sessions, the audit log."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from switchboard.errors import InvalidRequest, NotFound
from switchboard.platform import Platform
from switchboard.store.audit import AuditFilter
from switchboard.store.schema import audit_log, departments, users
from switchboard.store.tenants import Tenant


async def new_tenant(p: Platform) -> Tenant:
    return await p.tenants.create(f"id-{secrets.token_hex(4)}", usage_mode="hybrid")


def email(name: str = "ann") -> str:
    return f"{name}-{secrets.token_hex(3)}@example.com"


async def test_departments_are_per_tenant(platform: Platform) -> None:
    a, b = await new_tenant(platform), await new_tenant(platform)
    sales = await platform.departments.create(a.id, "Sales")
    await platform.departments.create(b.id, "Sales")  # the same name in another tenant is fine
    with pytest.raises(InvalidRequest):
        await platform.departments.create(a.id, "Sales")
    assert [d.name for d in await platform.departments.list(a.id)] == ["Sales"]
    with pytest.raises(NotFound):
        await platform.departments.get(b.id, sales.id)  # another tenant's id is not found
    assert (await platform.departments.ensure(a.id, "Sales")).id == sales.id
    renamed = await platform.departments.rename(a.id, sales.id, "Sales EMEA")
    assert renamed.name == "Sales EMEA"
    await platform.users.create(a.id, email(), role="user", department_id=sales.id)
    with pytest.raises(InvalidRequest):
        await platform.departments.delete(a.id, sales.id)
    empty = await platform.departments.create(a.id, "Empty")
    await platform.departments.delete(a.id, empty.id)
    assert [d.id for d in await platform.departments.list(a.id)] == [sales.id]


async def test_user_email_is_unique_per_tenant(platform: Platform) -> None:
    a, b = await new_tenant(platform), await new_tenant(platform)
    address = email()
    user = await platform.users.create(a.id, address.upper(), role="user")
    assert user.email == address  # stored lower-cased
    await platform.users.create(b.id, address, role="user")
    with pytest.raises(InvalidRequest):
        await platform.users.create(a.id, address, role="tenant_admin")
    admin_address = email("root")
    await platform.users.create(None, admin_address, role="platform_admin")
    with pytest.raises(InvalidRequest):  # the partial unique index for tenantless admins
        await platform.users.create(None, admin_address, role="platform_admin")
    with pytest.raises(NotFound):
        await platform.users.get(b.id, user.id)
    assert await platform.users.find_by_email(a.id, address.title()) == user


@pytest.mark.parametrize(
    ("tenant", "role"), [(True, "platform_admin"), (False, "tenant_admin"), (True, "owner")]
)
async def test_user_role_and_tenant_must_agree(platform: Platform, tenant: bool, role: str) -> None:
    t = await new_tenant(platform)
    with pytest.raises(InvalidRequest):
        await platform.users.create(t.id if tenant else None, email(), role=role)


async def test_the_database_refuses_a_tenantless_tenant_admin(platform: Platform) -> None:
    t = await new_tenant(platform)
    user = await platform.users.create(t.id, email(), role="tenant_admin")
    with pytest.raises(IntegrityError):
        async with platform.db.engine.begin() as conn:
            await conn.execute(update(users).where(users.c.id == user.id).values(tenant_id=None))


async def test_keys_by_owner_and_department(platform: Platform) -> None:
    t = await new_tenant(platform)
    red = await platform.departments.create(t.id, "Red")
    blue = await platform.departments.create(t.id, "Blue")
    ann = await platform.users.create(t.id, email("ann"), role="user", department_id=red.id)
    bob = await platform.users.create(t.id, email("bob"), role="user", department_id=blue.id)
    ann_key, _ = await platform.keys.create(t, name="ann", user_id=ann.id)
    bob_key, _ = await platform.keys.create(t, name="bob", user_id=bob.id)
    service, _ = await platform.keys.create(t, name="service")
    assert service.user_id is None
    assert [k.id for k in await platform.keys.list(t.id)] == [ann_key.id, bob_key.id, service.id]
    assert [k.id for k in await platform.keys.list(t.id, department_id=red.id)] == [ann_key.id]
    assert [k.id for k in await platform.keys.list(t.id, user_id=bob.id)] == [bob_key.id]
    assert (await platform.keys.get(ann_key.id)).user_id == ann.id
    await platform.users.delete(t.id, ann.id)
    orphan = await platform.keys.get(ann_key.id)
    assert orphan.revoked_at is not None
    assert orphan.user_id is None


async def test_refresh_rotation_and_reuse(platform: Platform) -> None:
    t = await new_tenant(platform)
    user = await platform.users.create(t.id, email(), role="user")
    session, first = await platform.sessions.create(
        user.id, t.id, max_age=timedelta(hours=1), client_ip="127.0.0.1", user_agent="pytest"
    )
    outcome, found, second = await platform.sessions.rotate(first)
    assert (outcome, found and found.id) == ("rotated", session.id)
    assert second is not None
    assert second != first
    outcome, found, third = await platform.sessions.rotate(first)  # the old one again
    assert (outcome, third) == ("reused", None)
    assert await platform.sessions.rotate("ses_nothing.secret") == ("unknown", None, None)
    assert await platform.sessions.rotate("garbage") == ("unknown", None, None)
    await platform.sessions.revoke(session.id, "logout")
    outcome, _, _ = await platform.sessions.rotate(second)
    assert outcome == "reused"  # a revoked family never rotates again
    stored = await platform.sessions.get(session.id)
    assert stored is not None
    assert stored.revoked_reason == "logout"
    assert not stored.alive(stored.created_at, timedelta(hours=1))


async def test_audit_log_is_append_only(platform: Platform) -> None:
    t = await new_tenant(platform)
    for i in range(3):
        await platform.audit.append(
            actor_kind="user",
            actor_id="usr_x",
            actor_role="tenant_admin",
            tenant_id=t.id,
            action=f"test.step{i}",
            details={"i": i},
            client_ip="127.0.0.1",
        )
    rows = await platform.audit.query(AuditFilter(tenant_id=t.id))
    assert [r.action for r in rows] == ["test.step2", "test.step1", "test.step0"]
    assert rows[0].details == {"i": 2}
    page = await platform.audit.query(AuditFilter(tenant_id=t.id, before=rows[0].id, limit=1))
    assert [r.action for r in page] == ["test.step1"]
    assert len(await platform.audit.query(AuditFilter(tenant_id=t.id, action="test."))) == 3
    for statement in (
        update(audit_log).where(audit_log.c.tenant_id == t.id).values(action="forged"),
        delete(audit_log).where(audit_log.c.tenant_id == t.id),
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with platform.db.engine.begin() as conn:
                await conn.execute(statement)
    if platform.db.dialect == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            async with platform.db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE audit_log"))
    assert len(await platform.audit.query(AuditFilter(tenant_id=t.id))) == 3


async def test_a_tenant_scope_sees_only_its_own_people(platform: Platform) -> None:
    """On PostgreSQL, row-level security hides other tenants' people and audit rows even from
    a query that forgets its tenant filter (on SQLite the scope is a plain transaction)."""
    a, b = await new_tenant(platform), await new_tenant(platform)
    mine = await platform.users.create(a.id, email(), role="user")
    await platform.users.create(b.id, email(), role="user")
    await platform.departments.create(b.id, "Theirs")
    await platform.audit.append(
        actor_kind="cli", actor_id=None, actor_role=None, tenant_id=b.id, action="test.b"
    )
    async with platform.db.tenant_scope(a.id) as conn:
        seen_users = set((await conn.execute(select(users.c.tenant_id))).scalars())
        seen_departments = set((await conn.execute(select(departments.c.tenant_id))).scalars())
        seen_audit = set((await conn.execute(select(audit_log.c.tenant_id))).scalars())
    if platform.db.dialect == "postgresql":
        assert seen_users == {a.id}
        assert seen_departments <= {a.id}
        assert seen_audit <= {a.id}
    else:
        assert {a.id, b.id} <= seen_users
    assert await platform.users.list(a.id) == [mine]

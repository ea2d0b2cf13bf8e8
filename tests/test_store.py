"""The repositories against real databases: every test runs on SQLite and on PostgreSQL.

The PostgreSQL database is shared by the whole run, so every test uses its own unique slugs
and request ids and never assumes a table is empty.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from switchboard.errors import InvalidRequest, NotFound
from switchboard.metering.usage import UsageEvent
from switchboard.store import Database, KeyRepository, TenantRepository, UsageRepository
from switchboard.store.database import utcnow
from switchboard.store.schema import api_keys


def slug(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def event(tenant_id: str, created_at: datetime, **fields: object) -> UsageEvent:
    return UsageEvent(
        request_id=fields.pop("request_id", f"req_{secrets.token_hex(8)}"),  # type: ignore[arg-type]
        tenant_id=tenant_id,
        key_id=None,
        created_at=created_at,
        endpoint="chat",
        **fields,  # type: ignore[arg-type]
    )


# -- database -------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_current(db_url: str) -> None:
    database = Database(db_url)
    try:
        await database.migrate()
        assert await database.is_current()
        await database.migrate()  # a second run is a no-op, not an error
        assert await database.is_current()
        await database.ping()
    finally:
        await database.dispose()


async def test_fresh_sqlite_database_is_not_current(tmp_path: object) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/nested/dir/fresh.db")
    try:
        assert not await database.is_current()
        await database.migrate()
        assert await database.is_current()
    finally:
        await database.dispose()


async def test_redacted_url_hides_the_password() -> None:
    database = Database("postgresql+asyncpg://user:hunter2@127.0.0.1:1/db")
    try:
        assert "hunter2" not in database.redacted_url()
        assert "user" in database.redacted_url()
    finally:
        await database.dispose()


# -- tenants --------------------------------------------------------------------------------


async def test_tenant_create_get_list(db: Database) -> None:
    repo = TenantRepository(db)
    a, b = slug("a"), slug("b")

    created = await repo.create(a, name="Acme Inc", usage_mode="local")
    other = await repo.create(b, usage_mode="hybrid")

    assert created.id.startswith("ten_")
    assert created.slug == a
    assert created.name == "Acme Inc"
    assert created.usage_mode == "local"
    assert created.created_at.tzinfo is not None
    assert other.name == b  # name defaults to the slug

    by_slug = await repo.get(a)
    by_id = await repo.get(created.id)
    assert by_slug == by_id
    assert by_slug.id == created.id
    assert by_slug.usage_mode == "local"
    assert abs(by_slug.created_at - created.created_at) < timedelta(milliseconds=1)

    listed = [t.slug for t in await repo.list()]
    assert a in listed
    assert b in listed
    assert listed == sorted(listed)


async def test_tenant_update_usage_mode_and_name(db: Database) -> None:
    repo = TenantRepository(db)
    s = slug()
    tenant = await repo.create(s, usage_mode="hybrid")

    updated = await repo.update(s, usage_mode="external")
    assert updated.usage_mode == "external"
    assert updated.name == s
    assert (await repo.get(tenant.id)).usage_mode == "external"

    renamed = await repo.update(tenant.id, name="Renamed")
    assert renamed.name == "Renamed"
    assert renamed.usage_mode == "external"

    with pytest.raises(InvalidRequest) as info:
        await repo.update(s, usage_mode="cloud")
    assert info.value.param == "usage_mode"
    assert (await repo.get(s)).usage_mode == "external"


async def test_tenant_duplicate_slug(db: Database) -> None:
    repo = TenantRepository(db)
    s = slug()
    first = await repo.create(s, usage_mode="local")

    with pytest.raises(InvalidRequest) as info:
        await repo.create(s, usage_mode="external")
    assert info.value.param == "slug"
    assert (await repo.get(s)) == first


@pytest.mark.parametrize("bad", ["", "Upper", "under_score", "-leading", "a" * 64, "sp ace", "é"])
async def test_tenant_bad_slug(db: Database, bad: str) -> None:
    repo = TenantRepository(db)
    with pytest.raises(InvalidRequest) as info:
        await repo.create(bad, usage_mode="local")
    assert info.value.param == "slug"


async def test_tenant_bad_usage_mode(db: Database) -> None:
    repo = TenantRepository(db)
    s = slug()
    with pytest.raises(InvalidRequest) as info:
        await repo.create(s, usage_mode="cloud")
    assert info.value.param == "usage_mode"
    with pytest.raises(NotFound):
        await repo.get(s)  # nothing was created


async def test_tenant_unknown(db: Database) -> None:
    repo = TenantRepository(db)
    with pytest.raises(NotFound):
        await repo.get(slug("ghost"))
    with pytest.raises(NotFound):
        await repo.get("ten_0000000000000000")
    with pytest.raises(NotFound):
        await repo.update(slug("ghost"), usage_mode="local")


# -- keys -----------------------------------------------------------------------------------


async def test_key_secret_is_never_stored(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    keys = KeyRepository(db)

    key, secret = await keys.create(tenant, name="ci")

    assert secret.startswith("sk-sb-")
    assert len(secret) > 40
    assert key.prefix != secret
    assert secret.startswith(key.prefix)
    assert key.name == "ci"
    random_part = secret.removeprefix("sk-sb-")
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(api_keys))).all()
    ours = [row for row in rows if row.id == key.id]
    assert len(ours) == 1
    for row in rows:
        for value in row:
            assert secret not in str(value)
            assert random_part not in str(value)


async def test_keys_are_unique(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    keys = KeyRepository(db)
    created = [await keys.create(tenant) for _ in range(3)]
    assert len({k.id for k, _ in created}) == 3
    assert len({s for _, s in created}) == 3
    assert {k.name for k, _ in created} == {"default"}


async def test_find_by_secret(db: Database) -> None:
    tenants = TenantRepository(db)
    tenant = await tenants.create(slug(), name="Finder", usage_mode="local")
    keys = KeyRepository(db)
    key, secret = await keys.create(tenant)

    found = await keys.find_by_secret(secret)

    assert found is not None
    found_key, found_tenant = found
    assert found_key.id == key.id
    assert found_key.revoked_at is None
    assert found_tenant.id == tenant.id
    assert found_tenant.slug == tenant.slug
    assert found_tenant.name == "Finder"
    assert found_tenant.usage_mode == "local"
    assert await keys.find_by_secret("sk-sb-" + secrets.token_urlsafe(32)) is None
    assert await keys.find_by_secret(secret + "x") is None
    assert await keys.find_by_secret(key.prefix) is None


async def test_key_list_is_per_tenant(db: Database) -> None:
    tenants = TenantRepository(db)
    a = await tenants.create(slug("a"), usage_mode="hybrid")
    b = await tenants.create(slug("b"), usage_mode="hybrid")
    keys = KeyRepository(db)
    a1, _ = await keys.create(a, name="one")
    a2, _ = await keys.create(a, name="two")
    b1, _ = await keys.create(b, name="bee")

    assert [k.id for k in await keys.list(a.id)] == [a1.id, a2.id]
    assert [k.id for k in await keys.list(b.id)] == [b1.id]
    assert await keys.list("ten_nobody") == []


async def test_revoke(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    keys = KeyRepository(db)
    key, secret = await keys.create(tenant)
    before = utcnow()

    revoked = await keys.revoke(key.id, tenant_id=tenant.id)

    assert revoked.revoked_at is not None
    assert revoked.revoked_at >= before - timedelta(seconds=1)
    assert not revoked.is_active(utcnow())
    assert (await keys.get(key.id)).revoked_at == revoked.revoked_at
    found = await keys.find_by_secret(secret)
    assert found is not None
    assert found[0].revoked_at is not None
    again = await keys.revoke(key.id)  # revoking twice keeps the first time
    assert again.revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await keys.revoke("key_doesnotexist")


async def test_cross_tenant_get_and_revoke_are_not_found(db: Database) -> None:
    tenants = TenantRepository(db)
    a = await tenants.create(slug("a"), usage_mode="hybrid")
    b = await tenants.create(slug("b"), usage_mode="hybrid")
    keys = KeyRepository(db)
    a_key, a_secret = await keys.create(a)

    with pytest.raises(NotFound):
        await keys.get(a_key.id, tenant_id=b.id)
    with pytest.raises(NotFound):
        await keys.revoke(a_key.id, tenant_id=b.id)

    still = await keys.get(a_key.id, tenant_id=a.id)
    assert still.revoked_at is None
    found = await keys.find_by_secret(a_secret)
    assert found is not None
    assert found[0].revoked_at is None
    assert found[1].id == a.id


async def test_expires_in_days(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    keys = KeyRepository(db)

    key, _ = await keys.create(tenant, expires_in_days=2)
    forever, _ = await keys.create(tenant)

    assert key.expires_at is not None
    assert abs(key.expires_at - (key.created_at + timedelta(days=2))) < timedelta(seconds=1)
    stored = await keys.get(key.id)
    assert stored.expires_at is not None
    assert stored.expires_at.tzinfo is not None
    assert abs(stored.expires_at - key.expires_at) < timedelta(milliseconds=1)
    assert stored.is_active(utcnow())
    assert not stored.is_active(utcnow() + timedelta(days=3))
    assert forever.expires_at is None
    assert (await keys.get(forever.id)).expires_at is None


# -- usage ----------------------------------------------------------------------------------


async def test_usage_is_per_tenant_newest_first(db: Database) -> None:
    tenants = TenantRepository(db)
    a = await tenants.create(slug("a"), usage_mode="hybrid")
    b = await tenants.create(slug("b"), usage_mode="hybrid")
    usage = UsageRepository(db)
    t0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    a_events = [
        event(a.id, t0 + timedelta(minutes=i), model="m", tokens_input=i, cost_usd=i / 1000)
        for i in range(4)
    ]
    b_events = [event(b.id, t0 + timedelta(minutes=10), model="other")]

    await usage.write([a_events[2], b_events[0], a_events[0]])
    await usage.write([a_events[3], a_events[1]])
    await usage.write([])

    rows = await usage.query(a.id)
    assert [r["request_id"] for r in rows] == [e.request_id for e in reversed(a_events)]
    assert {r["tenant_id"] for r in rows} == {a.id}
    newest = rows[0]
    assert newest["created_at"] == t0 + timedelta(minutes=3)
    assert newest["created_at"].tzinfo is not None
    assert newest["tokens_input"] == 3
    assert newest["cost_usd"] == pytest.approx(0.003)
    assert newest["model"] == "m"
    assert newest["stream"] is False
    assert [r["request_id"] for r in await usage.query(b.id)] == [b_events[0].request_id]
    assert len(await usage.query(a.id, limit=2)) == 2


async def test_usage_round_trips_every_field(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    key, _ = await KeyRepository(db).create(tenant)
    usage = UsageRepository(db)
    original = UsageEvent(
        request_id=f"req_{secrets.token_hex(8)}",
        tenant_id=tenant.id,
        key_id=key.id,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        endpoint="embeddings",
        model="emb",
        user_id="user-7",
        provider="ollama",
        upstream_model="nomic-embed-text",
        stream=True,
        tokens_input=3_000_000_000,
        tokens_output=5,
        tokens_estimated=True,
        cost_usd=0.00012345,
        latency_ms=321,
        ttft_ms=12,
        status=499,
        error="client went away",
    )
    await usage.write([original])

    (row,) = await usage.query(tenant.id)

    assert row == original.as_row()


async def test_usage_since_filters(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    usage = UsageRepository(db)
    t0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    events = [event(tenant.id, t0 + timedelta(hours=h)) for h in range(5)]
    await usage.write(events)

    rows = await usage.query(tenant.id, since=t0 + timedelta(hours=2))
    assert [r["request_id"] for r in rows] == [e.request_id for e in reversed(events[2:])]
    assert await usage.query(tenant.id, since=t0 + timedelta(days=1)) == []
    assert len(await usage.query(tenant.id, since=t0 - timedelta(days=1))) == 5


async def test_usage_since_with_a_utc_offset(db: Database) -> None:
    # `switchboard usage --since 2026-05-01T14:00:00+02:00` means 12:00 UTC.
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    usage = UsageRepository(db)
    t0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    events = [event(tenant.id, t0 + timedelta(hours=h)) for h in range(5)]
    await usage.write(events)

    since = datetime(2026, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    rows = await usage.query(tenant.id, since=since)

    assert [r["request_id"] for r in rows] == [e.request_id for e in reversed(events[2:])]


async def test_usage_replay_is_idempotent(db: Database) -> None:
    tenant = await TenantRepository(db).create(slug(), usage_mode="hybrid")
    usage = UsageRepository(db)
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    first = event(tenant.id, t0, tokens_input=10)
    second = event(tenant.id, t0 + timedelta(seconds=1))

    await usage.write([first])
    await usage.write([first, second])  # a replay of a batch that partly landed
    await usage.write([second, first])

    rows = await usage.query(tenant.id)
    assert sorted(r["request_id"] for r in rows) == sorted([first.request_id, second.request_id])
    assert next(r for r in rows if r["request_id"] == first.request_id)["tokens_input"] == 10

"""The database engine: created once per process, migrated on start, shared by repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Table, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from switchboard.store.isolation import ROLE, SETTING

_MIGRATIONS = Path(__file__).with_name("migrations")
# SET LOCAL ROLE and the tenant setting in one round trip; both end with the transaction.
_ENTER_SCOPE = text(
    f"SELECT set_config('role', :role, true), set_config('{SETTING}', :tenant, true)"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class Database:
    """Owns the async engine. ``url`` is any SQLAlchemy async URL (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is already there)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def is_current(self) -> bool:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_at_head)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def tenant_scope(self, tenant_id: str) -> AsyncIterator[AsyncConnection]:
        """A transaction in which, on PostgreSQL, row-level security admits only the rows of
        ``tenant_id`` (see `switchboard.store.isolation`); a plain transaction on SQLite."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(_ENTER_SCOPE, {"role": ROLE, "tenant": tenant_id})
            yield conn

    def reading(self, tenant_id: str | None) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads: in ``tenant_id``'s scope when given (row-level security on
        PostgreSQL), else the platform's own (platform admins, tenantless rows)."""
        if tenant_id is None:
            return self.engine.connect()
        return self.tenant_scope(tenant_id)

    def writing(self, tenant_id: str | None) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction for writes: in ``tenant_id``'s scope when given (row-level security on
        PostgreSQL), else the platform's own (platform admins, tenantless rows)."""
        if tenant_id is None:
            return self.engine.begin()
        return self.tenant_scope(tenant_id)

    async def upsert(
        self, table: Table, values: dict[str, Any], key: str, update: tuple[str, ...]
    ) -> None:
        """Insert ``values``, or update the ``update`` columns of the row with the same ``key``."""
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        stmt = insert(table).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key], set_={name: stmt.excluded[name] for name in update}
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    def redacted_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)


def _alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def _upgrade(conn: Connection) -> None:
    command.upgrade(_alembic_config(conn), "head")


def _at_head(conn: Connection) -> bool:
    script = ScriptDirectory.from_config(_alembic_config(conn))
    current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(script.get_heads())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

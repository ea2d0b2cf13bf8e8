"""Tenant isolation in the database itself, on PostgreSQL: row-level security.

The query layer filters every tenant-owned table on ``tenant_id``. On PostgreSQL the database
enforces the same again, so a query that forgets its filter still cannot read or write another
tenant's rows when it runs in a tenant's scope:

    async with db.tenant_scope(tenant_id) as conn:      one transaction, in which
        SET LOCAL ROLE switchboard_tenant               a role without BYPASSRLS
        SET LOCAL switchboard.tenant_id = '<tenant>'    the tenant the policies admit
        ... queries see and write only that tenant's rows (policy ``tenant_isolation``)

Outside a tenant scope the gateway's own role (the tables' owner) is not subject to the
policies: platform-wide work (the usage writer batching many tenants' events, the Lago
exporter, the platform admin) runs there. On SQLite ``tenant_scope`` is a plain transaction.

The migration that enables this creates the ``switchboard_tenant`` role (NOLOGIN) and grants it
to the migrating user, so that user needs CREATEROLE once (or an administrator creates the role
beforehand; the migration then only grants it). Every table with a ``tenant_id`` column must be
listed in `TENANT_TABLES` and get its policy in a migration with `isolate`; a test checks that
none is missing.
"""

from __future__ import annotations

from collections.abc import Callable

Execute = Callable[[str], object]  # alembic's op.execute

ROLE = "switchboard_tenant"
SETTING = "switchboard.tenant_id"

# table -> the column naming the row's tenant
TENANT_TABLES: dict[str, str] = {
    "tenants": "id",
    "api_keys": "tenant_id",
    "usage_events": "tenant_id",
    "tenant_configs": "tenant_id",
    "key_policies": "tenant_id",
    "tenant_plans": "tenant_id",
    "departments": "tenant_id",
    "users": "tenant_id",
    "sessions": "tenant_id",
    "audit_log": "tenant_id",
    "identity_providers": "tenant_id",
}


_CREATE_ROLE = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'switchboard_tenant') THEN
    CREATE ROLE switchboard_tenant NOLOGIN;
  END IF;
END
$$"""


def ensure_role(execute: Execute) -> None:
    execute(_CREATE_ROLE)
    execute(f"GRANT {ROLE} TO CURRENT_USER")
    execute(
        f"DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO {ROLE}', current_schema()); "
        "END $$"
    )


def isolate(execute: Execute, table: str, column: str = "tenant_id") -> None:
    """Grant the tenant role the table and admit only the scoped tenant's rows."""
    execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {ROLE}")
    execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
    execute(
        f"CREATE POLICY tenant_isolation ON {table} TO {ROLE} "
        f"USING ({column} = current_setting('{SETTING}', true)) "
        f"WITH CHECK ({column} = current_setting('{SETTING}', true))"
    )


def release(execute: Execute, table: str) -> None:
    execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
    execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    execute(f"REVOKE ALL ON {table} FROM {ROLE}")

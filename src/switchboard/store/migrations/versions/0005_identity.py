"""Identity and access: departments, users, sessions, the audit log; keys may belong to a user.

Revision ID: 0005
Revises: 0004

``users.tenant_id`` is NULL only for platform admins (a CHECK says so); e-mail addresses are
unique per tenant, and among platform admins (a partial unique index, since NULLs never
collide in a plain one). ``audit_log`` is append-only: triggers refuse UPDATE and DELETE on
both SQLite and PostgreSQL (and TRUNCATE on PostgreSQL). ``api_keys.user_id`` is added with a
plain ADD COLUMN (no batch rebuild), like 0004 did.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ROLE_CHECK = "role IN ('platform_admin', 'tenant_admin', 'department_admin', 'user')"
_TENANT_CHECK = "(role = 'platform_admin') = (tenant_id IS NULL)"
_SOURCE_CHECK = "source IN ('local', 'ldap', 'oidc')"

_SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END
"""
    for verb in ("UPDATE", "DELETE")
]

_PG_FUNCTION = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$
"""

_PG_TRIGGERS = [
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
]


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_departments_tenant_name"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("department_id", sa.String(32), sa.ForeignKey("departments.id"), nullable=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("role", sa.String(24), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("source", sa.String(8), nullable=False, server_default="local"),
        sa.Column("external_subject", sa.String(500), nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("last_login_at", nullable=True),
        sa.CheckConstraint(_ROLE_CHECK, name="ck_users_role"),
        sa.CheckConstraint(_TENANT_CHECK, name="ck_users_tenant_for_role"),
        sa.CheckConstraint(_SOURCE_CHECK, name="ck_users_source"),
        sa.UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),
    )
    op.create_index(
        "uq_users_platform_email",
        "users",
        ["email"],
        unique=True,
        sqlite_where=sa.text("tenant_id IS NULL"),
        postgresql_where=sa.text("tenant_id IS NULL"),
    )
    op.create_index(
        "uq_users_external_subject",
        "users",
        ["tenant_id", "source", "external_subject"],
        unique=True,
        sqlite_where=sa.text("external_subject IS NOT NULL"),
        postgresql_where=sa.text("external_subject IS NOT NULL"),
    )
    op.create_index("ix_users_department", "users", ["tenant_id", "department_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("refresh_hash", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("last_used_at"),
        _ts("expires_at"),
        _ts("revoked_at", nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id"])
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        _ts("at"),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(320), nullable=True),
        sa.Column("actor_role", sa.String(24), nullable=True),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(320), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False, server_default="ok"),
        sa.Column("details", sa.Text, nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
    )
    op.create_index("ix_audit_log_tenant_id", "audit_log", ["tenant_id", "id"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.add_column("api_keys", sa.Column("user_id", sa.String(32), nullable=True))
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key("fk_api_keys_user", "api_keys", "users", ["user_id"], ["id"])
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
        op.drop_constraint("fk_api_keys_user", "api_keys", type_="foreignkey")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_column("api_keys", "user_id")
    op.drop_table("audit_log")
    op.drop_table("sessions")
    op.drop_table("users")
    op.drop_table("departments")

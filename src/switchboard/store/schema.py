"""Tables, as SQLAlchemy Core metadata. Alembic migrations create them; this mirrors them.

Every row that belongs to a tenant carries ``tenant_id``, and every query on such a table in
`switchboard.store` filters on it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("usage_mode", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # The user the key belongs to; NULL for a tenant's service key (migration 0005).
    Column("user_id", String(32), ForeignKey("users.id"), nullable=True, index=True),
)

usage_events = Table(
    "usage_events",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id"), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(128), nullable=True),
    Column("upstream_model", String(200), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("tokens_input", BigInteger, nullable=False),
    Column("tokens_output", BigInteger, nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("ttft_ms", Integer, nullable=True),
    Column("status", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("route", Text, nullable=True),
    Column("refusal_reason", Text, nullable=True),
    Column("cached", Boolean, nullable=False, server_default=false()),
    # migration 0006: price books and plans
    Column("tokens_cached_input", BigInteger, nullable=False, server_default="0"),
    Column("tokens_cache_write", BigInteger, nullable=False, server_default="0"),
    Column("price_version", String(200), nullable=True),
    Column("billed_amount", Float, nullable=False, server_default="0"),
    Column("currency", String(3), nullable=False, server_default="USD"),
    Column("plan_version", Integer, nullable=True),
    Index("ix_usage_events_tenant_time", "tenant_id", "created_at"),
    Index("ix_usage_events_time", "created_at"),  # migration 0010, with the append-only triggers
)

# Tenant plan versions (migration 0006): each in force from `effective_from` until the next.
tenant_plans = Table(
    "tenant_plans",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("terms", Text, nullable=False),  # PlanTerms, as JSON
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_tenant_plans_tenant_from", "tenant_id", "effective_from"),
)

# Export bookkeeping for the ledger (migration 0003): a trigger adds a 'pending' row for every
# usage_events insert; only the exporter updates these rows ('pending' | 'sent' | 'dead').
usage_exports = Table(
    "usage_exports",
    metadata,
    Column(
        "request_id",
        String(64),
        ForeignKey("usage_events.request_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("state", String(8), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_export_at", DateTime(timezone=True), nullable=False),
    Column("event_at", DateTime(timezone=True), nullable=False),
    Column("exported_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_usage_exports_due", "state", "next_export_at"),
)

tenant_configs = Table(
    "tenant_configs",
    metadata,
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("config", Text, nullable=False),  # the TenantConfig document, as JSON
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

key_policies = Table(
    "key_policies",
    metadata,
    Column("key_id", String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("policy", Text, nullable=False),  # the KeyPolicy document, as JSON
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

platform_secrets = Table(
    "platform_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# platform_secrets also holds the session signing key (name 'session_secret', migration-free):
# random bytes, hex, in the secret_hash column; see switchboard.auth.tokens.

# -- identity and access (migration 0005) ---------------------------------------------------

departments = Table(
    "departments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_departments_tenant_name"),
)

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    # NULL only for platform admins (ck_users_tenant_for_role).
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("department_id", String(32), ForeignKey("departments.id"), nullable=True),
    Column("email", String(320), nullable=False),
    Column("name", String(200), nullable=True),
    Column("role", String(24), nullable=False),
    Column("password_hash", String(200), nullable=True),  # argon2id; NULL for LDAP/OIDC users
    Column("source", String(8), nullable=False, server_default="local"),
    Column("external_subject", String(500), nullable=True),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_login_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(
        "role IN ('platform_admin', 'tenant_admin', 'department_admin', 'user')",
        name="ck_users_role",
    ),
    CheckConstraint(
        "(role = 'platform_admin') = (tenant_id IS NULL)", name="ck_users_tenant_for_role"
    ),
    CheckConstraint("source IN ('local', 'ldap', 'oidc')", name="ck_users_source"),
    UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),
    Index(
        "uq_users_platform_email",
        "email",
        unique=True,
        sqlite_where=text("tenant_id IS NULL"),
        postgresql_where=text("tenant_id IS NULL"),
    ),
    Index(
        "uq_users_external_subject",
        "tenant_id",
        "source",
        "external_subject",
        unique=True,
        sqlite_where=text("external_subject IS NOT NULL"),
        postgresql_where=text("external_subject IS NOT NULL"),
    ),
    Index("ix_users_department", "tenant_id", "department_id"),
)

# One row per refresh-token family: rotating the refresh token replaces refresh_hash.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", String(32), nullable=True),  # the user's; NULL for platform admins
    Column("refresh_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_reason", String(32), nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("user_agent", String(300), nullable=True),
    Column("method", String(16), nullable=True),  # password | ldap | oidc; NULL before 0011
    Index("ix_sessions_user", "user_id"),
)

# Append-only: triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL).
audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor_kind", String(16), nullable=False),  # admin_key | user | cli | anonymous
    Column("actor_id", String(320), nullable=True),
    Column("actor_role", String(24), nullable=True),
    Column("tenant_id", String(32), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", String(320), nullable=True),
    Column("outcome", String(16), nullable=False, server_default="ok"),  # ok | denied | failed
    Column("details", Text, nullable=True),  # JSON, never secrets
    Column("client_ip", String(64), nullable=True),
    Column("user_agent", String(300), nullable=True),
    Index("ix_audit_log_tenant_id", "tenant_id", "id"),
    Index("ix_audit_log_at", "at"),
)

# A tenant's LDAP/AD directories and OIDC issuers (migration 0008). `document` is the
# ProviderDocument as JSON; `secret` the Fernet token of its password or client secret.
identity_providers = Table(
    "identity_providers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("document", Text, nullable=False),
    Column("secret", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_identity_providers_tenant_name"),
)

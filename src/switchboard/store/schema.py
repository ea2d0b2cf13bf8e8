"""Tables, as SQLAlchemy Core metadata. Alembic migrations create them; this mirrors them.

Every row that belongs to a tenant carries ``tenant_id``, and every query on such a table in
`switchboard.store` filters on it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    false,
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
    Index("ix_usage_events_tenant_time", "tenant_id", "created_at"),
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

platform_secrets = Table(
    "platform_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

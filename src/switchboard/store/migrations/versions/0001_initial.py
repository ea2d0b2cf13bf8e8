"""Tenants, API keys, the usage ledger and platform secrets.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("usage_mode", sa.String(16), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        _ts("created_at"),
        _ts("expires_at", nullable=True),
        _ts("revoked_at", nullable=True),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "usage_events",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        _ts("created_at"),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(128), nullable=True),
        sa.Column("upstream_model", sa.String(200), nullable=True),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("tokens_input", sa.BigInteger, nullable=False),
        sa.Column("tokens_output", sa.BigInteger, nullable=False),
        sa.Column("tokens_estimated", sa.Boolean, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Integer, nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_usage_events_tenant_time", "usage_events", ["tenant_id", "created_at"])
    op.create_table(
        "platform_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        _ts("created_at"),
    )


def downgrade() -> None:
    op.drop_table("platform_secrets")
    op.drop_index("ix_usage_events_tenant_time", table_name="usage_events")
    op.drop_table("usage_events")
    op.drop_index("ix_api_keys_tenant_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")

"""Tenant policy documents; usage events record refusals and cache hits.

Revision ID: 0004
Revises: 0003

Columns are added with plain ALTER TABLE ADD COLUMN, not batch mode: on SQLite batch mode
rebuilds the table, which would drop the export trigger migration 0003 put on usage_events.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_configs",
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("usage_events", sa.Column("refusal_reason", sa.Text, nullable=True))
    op.add_column(
        "usage_events",
        sa.Column("cached", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("usage_events", "cached")
    op.drop_column("usage_events", "refusal_reason")
    op.drop_table("tenant_configs")

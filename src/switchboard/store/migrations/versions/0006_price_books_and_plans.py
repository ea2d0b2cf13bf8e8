"""Price books and tenant plans: usage events carry prompt-cache tokens, the price version,
and the billed amount; ``tenant_plans`` holds each tenant's plan versions.

Revision ID: 0006
Revises: 0005

Columns are added with plain ALTER TABLE ADD COLUMN (not batch mode, which on SQLite rebuilds
the table and drops 0003's export trigger). Rows already in the ledger were billed at cost in
USD, which is what the defaults say.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("tokens_cached_input", sa.BigInteger, "0"),
    ("tokens_cache_write", sa.BigInteger, "0"),
    ("price_version", sa.String(200), None),
    ("billed_amount", sa.Float, "0"),
    ("currency", sa.String(3), "USD"),
    ("plan_version", sa.Integer, None),
)


def upgrade() -> None:
    for name, kind, default in _COLUMNS:
        op.add_column(
            "usage_events",
            sa.Column(name, kind, nullable=default is None, server_default=default),
        )
    op.execute("UPDATE usage_events SET billed_amount = cost_usd")
    op.create_table(
        "tenant_plans",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("terms", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tenant_plans_tenant_from", "tenant_plans", ["tenant_id", "effective_from"])


def downgrade() -> None:
    op.drop_index("ix_tenant_plans_tenant_from", table_name="tenant_plans")
    op.drop_table("tenant_plans")
    for name, _kind, _default in reversed(_COLUMNS):
        op.drop_column("usage_events", name)

"""Usage events record the upstream attempts a request made (retries, failover, fallbacks).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("route", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("route")
        batch.drop_column("attempts")

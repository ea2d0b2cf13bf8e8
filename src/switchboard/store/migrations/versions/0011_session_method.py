"""Sessions remember how they were signed in (password, ldap, oidc), for the session lists.

Revision ID: 0011
Revises: 0010

Sessions from before this migration have no method (NULL: unknown). A plain ADD COLUMN of a
nullable column, like 0004 and 0005 did, needs no batch rebuild on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("method", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("method")

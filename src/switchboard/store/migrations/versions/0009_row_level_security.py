"""Row-level security on PostgreSQL: every tenant-owned table admits, to the tenant role, only
the rows of the tenant its transaction is scoped to (see `switchboard.store.isolation`).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

from switchboard.store.isolation import TENANT_TABLES, ensure_role, isolate, release

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    ensure_role(op.execute)
    for table, column in TENANT_TABLES.items():
        isolate(op.execute, table, column)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        release(op.execute, table)

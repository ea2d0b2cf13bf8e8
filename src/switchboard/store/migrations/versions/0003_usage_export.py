"""Export bookkeeping for the usage ledger: one ``usage_exports`` row per ledger row.

The bookkeeping lives in its own table keyed by ``request_id`` rather than in columns on
``usage_events``, so the ledger itself stays strictly append-only (no row of it is ever
updated) and the hot insert path in `switchboard.store.usage` is untouched. An AFTER INSERT
trigger on ``usage_events`` adds the ``pending`` row in the same transaction as the ledger
row, so no event can be written without being queued for export; rows already in the ledger
are queued by this migration.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TRIGGER = "usage_events_export_pending"

_SQLITE_TRIGGER = """
CREATE TRIGGER usage_events_export_pending AFTER INSERT ON usage_events
BEGIN
    INSERT OR IGNORE INTO usage_exports (request_id, state, attempts, next_export_at, event_at)
    VALUES (NEW.request_id, 'pending', 0, NEW.created_at, NEW.created_at);
END
"""

_PG_FUNCTION = """
CREATE FUNCTION usage_events_export_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_exports (request_id, state, attempts, next_export_at, event_at)
    VALUES (NEW.request_id, 'pending', 0, NEW.created_at, NEW.created_at)
    ON CONFLICT (request_id) DO NOTHING;
    RETURN NULL;
END
$$
"""

_PG_TRIGGER = (
    "CREATE TRIGGER usage_events_export_pending AFTER INSERT ON usage_events "
    "FOR EACH ROW EXECUTE FUNCTION usage_events_export_pending()"
)


def upgrade() -> None:
    op.create_table(
        "usage_exports",
        sa.Column(
            "request_id",
            sa.String(64),
            sa.ForeignKey("usage_events.request_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.String(8), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_export_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_usage_exports_due", "usage_exports", ["state", "next_export_at"])
    op.execute(
        "INSERT INTO usage_exports (request_id, state, attempts, next_export_at, event_at) "
        "SELECT request_id, 'pending', 0, created_at, created_at FROM usage_events"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER} ON usage_events")
        op.execute(f"DROP FUNCTION IF EXISTS {_TRIGGER}()")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER}")
    op.drop_index("ix_usage_exports_due", table_name="usage_exports")
    op.drop_table("usage_exports")

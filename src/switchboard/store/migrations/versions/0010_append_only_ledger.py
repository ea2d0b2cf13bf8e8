"""The usage ledger is append-only: triggers refuse UPDATE and DELETE on ``usage_events`` (and
TRUNCATE on PostgreSQL); an index on the request time serves platform-wide time ranges.

Revision ID: 0010
Revises: 0009

Export bookkeeping never touches the ledger: it lives in ``usage_exports`` (migration 0003),
which the exporter updates freely. A later migration that must rewrite ledger rows drops the
triggers first and puts them back after, in the same transaction.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_MESSAGE = "usage_events is an append-only ledger"

_SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER usage_events_no_{verb.lower()} BEFORE {verb} ON usage_events
BEGIN
    SELECT RAISE(ABORT, '{_MESSAGE}');
END
"""
    for verb in ("UPDATE", "DELETE")
]

_PG_FUNCTION = f"""
CREATE FUNCTION usage_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_MESSAGE}';
END
$$
"""

_PG_TRIGGERS = [
    "CREATE TRIGGER usage_events_no_change BEFORE UPDATE OR DELETE ON usage_events "
    "FOR EACH ROW EXECUTE FUNCTION usage_events_append_only()",
    "CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON usage_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION usage_events_append_only()",
]


def upgrade() -> None:
    op.create_index("ix_usage_events_time", "usage_events", ["created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS usage_events_no_truncate ON usage_events")
        op.execute("DROP TRIGGER IF EXISTS usage_events_no_change ON usage_events")
        op.execute("DROP FUNCTION IF EXISTS usage_events_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS usage_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS usage_events_no_delete")
    op.drop_index("ix_usage_events_time", table_name="usage_events")

"""Alembic migrations; `switchboard.store.database.Database.migrate` applies them."""

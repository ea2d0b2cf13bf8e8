"""The services the admin API and the CLI share: one database, one repository per concern."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from switchboard.settings import Settings
from switchboard.store import Database, KeyRepository, TenantRepository, UsageRepository
from switchboard.store.audit import AuditRepository
from switchboard.store.departments import DepartmentRepository
from switchboard.store.key_policies import KeyPolicyRepository
from switchboard.store.plans import PlanRepository
from switchboard.store.sessions import SessionRepository
from switchboard.store.tenant_configs import TenantConfigRepository
from switchboard.store.users import UserRepository


class Platform:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.tenants = TenantRepository(db)
        self.keys = KeyRepository(db)
        self.usage = UsageRepository(db)
        self.configs = TenantConfigRepository(db)
        self.departments = DepartmentRepository(db)
        self.users = UserRepository(db)
        self.sessions = SessionRepository(db)
        self.audit = AuditRepository(db)
        self.plans = PlanRepository(db)
        self.key_policies = KeyPolicyRepository(db)


@asynccontextmanager
async def open_platform(settings: Settings) -> AsyncIterator[Platform]:
    """A migrated database for one CLI command; closed afterwards."""
    db = Database(settings.resolved_database_url())
    try:
        await db.migrate()
        yield Platform(db)
    finally:
        await db.dispose()

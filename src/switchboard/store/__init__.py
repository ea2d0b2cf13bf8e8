"""Persistence: the engine, migrations, and one repository per table family."""

from switchboard.store.database import Database
from switchboard.store.keys import ApiKey, KeyRepository
from switchboard.store.tenants import Tenant, TenantRepository
from switchboard.store.usage import UsageRepository

__all__ = ["ApiKey", "Database", "KeyRepository", "Tenant", "TenantRepository", "UsageRepository"]

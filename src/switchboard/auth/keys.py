"""Tenant API key authentication with an in-process cache.

A key found in the database is trusted for ``ttl`` seconds without asking again, so the hot
path costs one SHA-256 and one dict lookup. Revoking a key takes effect at once in the process
that revoked it, and on every other worker within ``ttl`` seconds. Expiry is exact: it is checked
on every request against the cached expiry time. A key whose owner (a user) is disabled is
refused like a revoked one, on the same terms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from switchboard.errors import AuthenticationFailed, PermissionDenied
from switchboard.policy.limit_set import NO_KEY_POLICY, KeyPolicy
from switchboard.policy.tenant_config import TenantConfig
from switchboard.store.key_policies import KeyPolicyRepository
from switchboard.store.keys import ApiKey, KeyRepository, hash_secret
from switchboard.store.tenant_configs import TenantConfigRepository
from switchboard.store.tenants import Tenant

if TYPE_CHECKING:  # store.users imports auth.roles, which runs this package's __init__
    from switchboard.store.users import UserRepository


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated tenant API key, with its tenant's policy as of the cache fill."""

    key: ApiKey
    tenant: Tenant
    config: TenantConfig = field(default_factory=TenantConfig)
    # The key's own limits, budget and allowed models (shared, never mutated).
    policy: KeyPolicy = field(default_factory=lambda: NO_KEY_POLICY)


@dataclass(slots=True)
class _Entry:
    caller: Caller | None
    fresh_until: float
    expires_at: float | None
    revoked: bool
    owner_disabled: bool = False


class KeyAuthenticator:
    def __init__(
        self,
        keys: KeyRepository,
        *,
        ttl: float,
        configs: TenantConfigRepository | None = None,
        policies: KeyPolicyRepository | None = None,
        users: UserRepository | None = None,
        max_entries: int = 100_000,
    ) -> None:
        self._keys = keys
        self._users = users
        self._configs = configs
        self._policies = policies
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[str, _Entry] = {}

    async def authenticate(self, token: str, tenant_header: str | None = None) -> Caller:
        digest = hash_secret(token)
        entry = self._cache.get(digest)
        if entry is None or entry.fresh_until < time.monotonic():
            entry = await self._load(token, digest)
        caller = entry.caller
        if caller is None:
            raise AuthenticationFailed("invalid API key")
        if entry.revoked:
            raise AuthenticationFailed("this API key has been revoked", code="revoked_api_key")
        if entry.owner_disabled:
            raise AuthenticationFailed(
                "the user this API key belongs to is disabled", code="key_owner_disabled"
            )
        if entry.expires_at is not None and entry.expires_at <= time.time():
            raise AuthenticationFailed("this API key has expired", code="expired_api_key")
        if tenant_header and tenant_header not in (caller.tenant.id, caller.tenant.slug):
            raise PermissionDenied(
                "X-Tenant-Id does not match the tenant of this API key", code="tenant_mismatch"
            )
        return caller

    async def _load(self, token: str, digest: str) -> _Entry:
        found = await self._keys.find_by_secret(token)
        fresh_until = time.monotonic() + self._ttl
        if found is None:
            entry = _Entry(None, fresh_until, None, revoked=False)
        else:
            key, tenant = found
            config = await self._configs.get(tenant.id) if self._configs else TenantConfig()
            policy = (
                await self._policies.get(tenant.id, key.id) if self._policies else NO_KEY_POLICY
            )
            owner = None
            if key.user_id is not None and self._users is not None:
                owner = await self._users.get_any(key.user_id)
            entry = _Entry(
                Caller(key, tenant, config, policy),
                fresh_until,
                key.expires_at.timestamp() if key.expires_at else None,
                revoked=key.revoked_at is not None,
                owner_disabled=owner is not None and owner.disabled,
            )
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[digest] = entry
        return entry

    def forget(self, key_id: str | None = None, tenant_id: str | None = None) -> None:
        """Drop cached entries (all, or one key's, or one tenant's) after a change here."""
        if key_id is None and tenant_id is None:
            self._cache.clear()
            return
        for digest, entry in list(self._cache.items()):
            caller = entry.caller
            if caller is not None and (caller.key.id == key_id or caller.tenant.id == tenant_id):
                del self._cache[digest]

"""Tenant API key authentication with an in-process cache.

A key looked up in the database is trusted for ``ttl`` seconds, counted from the moment the
lookup started, without asking again, so the hot path costs one SHA-256 and one dict lookup.
Revoking a key takes effect at once in the process that revoked it, and on every other worker
within ``ttl`` seconds. Expiry is exact: it is checked on every request against the cached
expiry time. A key whose owner (a user) is disabled is refused like a revoked one, on the same
terms.

The database is asked at most once at a time per key. Requests that need a lookup (a key not
cached, or cached for longer than ``ttl``) wait for the one already under way when it started
less than ``ttl`` ago, and unknown keys are cached like known ones, so a burst of requests, or
of bad keys, costs one lookup per key. A key still in use after ``REFRESH_AHEAD`` of its
``ttl`` is looked up again in the background while its cached entry is served, so a key in
steady use does not make its requests wait for the database. ``forget`` drops entries at once:
a lookup that was under way when it was called still answers the requests already waiting for
it, but its result is not cached, and later requests start a lookup of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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


log = logging.getLogger("switchboard.keys")

# The share of the TTL after which a cached key that is still in use is looked up again in the
# background (the entry is served meanwhile; past the TTL requests wait for a lookup).
REFRESH_AHEAD = 0.8


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated tenant API key, with its tenant's policy as of the cache fill."""

    key: ApiKey
    tenant: Tenant
    config: TenantConfig = field(default_factory=TenantConfig)
    # The key's own limits, budget and allowed models (shared, never mutated).
    policy: KeyPolicy = field(default_factory=lambda: NO_KEY_POLICY)
    # What the limits step worked out for this caller, kept with it (`gateway.scopes`); the
    # one field that is set after construction, once, and never read by anything else.
    limits_memo: object = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class _Entry:
    caller: Caller | None  # None: no such key (cached too, so bad keys cost one lookup each)
    fresh_until: float  # the lookup's start + ttl, on the authenticator's clock
    refresh_at: float  # the lookup's start + REFRESH_AHEAD * ttl
    expires_at: float | None
    revoked: bool
    owner_disabled: bool = False


@dataclass(slots=True, eq=False)
class _Load:
    """One database lookup of one key, shared by every request that waits for it."""

    task: asyncio.Task[_Entry]
    started: float
    background: bool  # started by a refresh ahead of the TTL, not by a waiting request


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._users = users
        self._configs = configs
        self._policies = policies
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._loads: dict[str, _Load] = {}  # by key digest: the lookup new requests may join
        self._tasks: set[asyncio.Task[_Entry]] = set()  # every lookup under way, for aclose
        # Bumped by forget(): a lookup started before the bump does not write to the cache.
        self._generation = 0

    async def authenticate(self, token: str, tenant_header: str | None = None) -> Caller:
        return _admit(await self._entry(token), tenant_header)

    async def aclose(self) -> None:
        """Cancel the lookups under way (refreshes nobody waits for) and wait until they end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loads.clear()

    def forget(self, key_id: str | None = None, tenant_id: str | None = None) -> None:
        """Drop cached entries (all, or one key's, or one tenant's) after a change here.

        Lookups under way may have read the database before the change: they still answer the
        requests waiting for them, but none is cached or joined by a later request."""
        self._generation += 1
        self._loads.clear()
        if key_id is None and tenant_id is None:
            self._cache.clear()
            return
        for digest, entry in list(self._cache.items()):
            caller = entry.caller
            if caller is not None and (caller.key.id == key_id or caller.tenant.id == tenant_id):
                del self._cache[digest]

    async def _entry(self, token: str) -> _Entry:
        digest = hash_secret(token)
        now = self._clock()
        entry = self._cache.get(digest)
        if entry is None or entry.fresh_until < now:
            load = self._lookup(token, digest, now, background=False)
            # Shielded: a request that goes away does not cancel the lookup others wait for.
            return await asyncio.shield(load.task)
        if entry.refresh_at <= now:
            self._lookup(token, digest, now, background=True)
        return entry

    def _lookup(self, token: str, digest: str, now: float, *, background: bool) -> _Load:
        """The lookup of this key under way, or a new one if none started within the TTL.

        Joining only a lookup younger than the TTL keeps the revocation promise for the
        requests that join it: what they are told was read less than ``ttl`` ago."""
        load = self._loads.get(digest)
        if load is not None and not load.task.done() and now - load.started <= self._ttl:
            return load
        task = asyncio.create_task(
            self._load(token, digest, now, self._generation), name="key-cache-lookup"
        )
        load = _Load(task, now, background)
        self._loads[digest] = load
        self._tasks.add(task)
        task.add_done_callback(partial(self._finished, digest, load))
        return load

    def _finished(self, digest: str, load: _Load, task: asyncio.Task[_Entry]) -> None:
        self._tasks.discard(task)
        if self._loads.get(digest) is load:
            del self._loads[digest]
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so a refresh nobody awaited fails quietly
        if error is not None and load.background:
            log.warning(
                "looking up a cached API key again failed; its entry is served until its TTL "
                "runs out",
                exc_info=error,
            )

    async def _load(self, token: str, digest: str, started: float, generation: int) -> _Entry:
        found = await self._keys.find_by_secret(token)
        fresh_until = started + self._ttl
        refresh_at = started + self._ttl * REFRESH_AHEAD
        if found is None:
            entry = _Entry(None, fresh_until, refresh_at, None, revoked=False)
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
                refresh_at,
                key.expires_at.timestamp() if key.expires_at else None,
                revoked=key.revoked_at is not None,
                owner_disabled=owner is not None and owner.disabled,
            )
        if generation == self._generation:  # else forget() ran meanwhile: answer, don't keep
            self._store(digest, entry)
        return entry

    def _store(self, digest: str, entry: _Entry) -> None:
        current = self._cache.get(digest)
        if current is not None and current.fresh_until > entry.fresh_until:
            return  # a lookup started later has already landed
        if current is None and len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[digest] = entry


def _admit(entry: _Entry, tenant_header: str | None) -> Caller:
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

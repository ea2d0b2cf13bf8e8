"""Sign-in throttling: failed sign-ins are counted twice, and either count can refuse.

    per address  (tenant, account, client address)   up to ``per_address`` failures
    per account  (tenant, account), every address     up to ``per_account`` failures

within a sliding window of ``window_seconds``. While either count is full, `check` raises 429
``login_throttled`` with ``Retry-After`` (until the oldest failure of the full count leaves
the window), whether or not the account exists. A success clears the per-address count only:
the per-account count keeps slowing an attack spread over many addresses, whoever else signs
in meanwhile. The account is the e-mail of a password sign-in, or ``ldap:<provider>:<user>``.

An allowed `check` also reserves an *attempt* in both counts until `failed` or `succeeded`
ends it (or ``ATTEMPT_SECONDS`` pass), so attempts sent at once cannot all pass `check`
before the first failure is counted: together they get the allowance, not more.

`MemoryLoginThrottle` counts in this worker process (for one worker); `RedisLoginThrottle`
(`switchboard.auth.redis_throttle`) counts in Redis, shared by every worker and replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from switchboard.errors import RateLimited

# How long a checked attempt counts without its outcome (a verification that never reported).
ATTEMPT_SECONDS = 10.0
_MAX_TRACKED = 100_000  # counts the in-process throttle keeps; the oldest go first


class LoginKey(NamedTuple):
    tenant: str  # the tenant's id ("" for a platform admin; an unknown tenant as given)
    account: str  # the normalised e-mail, or "ldap:<provider>:<username>"
    address: str  # the client's address as the gateway sees it

    @property
    def account_key(self) -> tuple[str, str]:
        return (self.tenant, self.account)


@dataclass(frozen=True, slots=True)
class LoginAllowance:
    per_address: int  # failures per (tenant, account, address) within the window
    per_account: int  # failures per (tenant, account) within the window, every address
    window_seconds: float


class LoginThrottle(Protocol):
    async def check(self, key: LoginKey) -> None:
        """Raise `login_throttled` while either count of ``key`` is full; else reserve an
        attempt that `failed` or `succeeded` ends."""
        ...

    async def failed(self, key: LoginKey) -> None:
        """The attempt failed: it counts per address and per account."""
        ...

    async def succeeded(self, key: LoginKey) -> None:
        """The attempt succeeded: the per-address count is cleared, the per-account one kept."""
        ...


def login_throttled(retry_after: float) -> RateLimited:
    return RateLimited(
        "too many failed sign-in attempts; try again later",
        retry_after=max(1.0, retry_after),
        code="login_throttled",
    )


@dataclass(slots=True)
class _Count:
    # Short lists (at most the allowance each), oldest first: smaller than deques.
    failures: list[float] = field(default_factory=list)  # when each failure happened
    attempts: list[float] = field(default_factory=list)  # when each attempt under way began

    def held(self, now: float, window: float) -> int:
        """Drop what has expired; the failures and attempts that still count."""
        while self.failures and self.failures[0] <= now - window:
            del self.failures[0]
        while self.attempts and self.attempts[0] <= now - ATTEMPT_SECONDS:
            del self.attempts[0]
        return len(self.failures) + len(self.attempts)

    def frees_at(self, window: float) -> float:
        """When the first entry that counts expires."""
        ends = [self.failures[0] + window] if self.failures else []
        if self.attempts:
            ends.append(self.attempts[0] + ATTEMPT_SECONDS)
        return min(ends)


class MemoryLoginThrottle:
    """The counts in this process: exact for one worker; every call runs without awaiting."""

    def __init__(
        self, allowance: LoginAllowance, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._allowance = allowance
        self._clock = clock
        self._counts: dict[tuple[str, ...], _Count] = {}

    async def check(self, key: LoginKey) -> None:
        now, window = self._clock(), self._allowance.window_seconds
        scopes = self._scopes(key)
        waits = [
            count.frees_at(window) - now
            for scope, limit in scopes
            if (count := self._counts.get(scope)) is not None and count.held(now, window) >= limit
        ]
        if waits:
            raise login_throttled(max(waits))
        for scope, _ in scopes:
            self._count(scope).attempts.append(now)

    async def failed(self, key: LoginKey) -> None:
        now = self._clock()
        for scope, limit in self._scopes(key):
            count = self._count(scope)
            if count.attempts:
                del count.attempts[0]
            count.failures.append(now)
            if len(count.failures) > limit:
                del count.failures[:-limit]

    async def succeeded(self, key: LoginKey) -> None:
        address, account = (scope for scope, _ in self._scopes(key))
        self._counts.pop(address, None)
        count = self._counts.get(account)
        if count is not None:
            if count.attempts:
                del count.attempts[0]
            if not count.failures and not count.attempts:
                del self._counts[account]

    def _scopes(self, key: LoginKey) -> tuple[tuple[tuple[str, ...], int], ...]:
        return ((key, self._allowance.per_address), (key.account_key, self._allowance.per_account))

    def _count(self, scope: tuple[str, ...]) -> _Count:
        count = self._counts.get(scope)
        if count is None:
            if len(self._counts) >= _MAX_TRACKED:
                del self._counts[next(iter(self._counts))]
            count = self._counts[scope] = _Count()
        return count

"""The in-process limiter: GCRA buckets and expiring leases in dicts, for a single worker.

    admit ──▶ read every bucket ──▶ all fit? ──yes──▶ write every bucket ──▶ Decision
                                         └──no───▶ write nothing ─────────▶ Decision

Every method runs without awaiting, so on one event loop each call is atomic. Limits do not hold
across workers or replicas: use `RedisLimiter` there. Memory stays bounded: a bucket whose
``tat`` has passed is full and carries no information, an expired lease holds no slot; both are
swept once the tables double in size since the last sweep.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence

from switchboard.limits.base import (
    EPS,
    Check,
    Decision,
    Rule,
    Scope,
    merge_checks,
    rule_state,
)

_MIN_SWEEP = 1024

BucketKey = tuple[Scope, str, int]  # (scope, rule name, window seconds)


def _bucket(scope: Scope, rule: Rule) -> BucketKey:
    return (scope, rule.name, rule.window_seconds)


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[BucketKey, float] = {}
        self._leases: dict[Scope, list[float]] = {}  # lease deadlines, sorted
        self._sweep_at = _MIN_SWEEP

    async def admit(self, checks: Sequence[Check], *, distinct: bool = False) -> Decision:
        # On every request of a tenant with limits: one pass to read, one to write. ``late`` is
        # the module docstring's formula (base.py), in the same order of operations as the Lua
        # script in redis.py, so both backends round alike.
        now = self._clock()
        tats = self._tats
        read: list[tuple[BucketKey, Scope, Rule, int, float, float]] = []
        allowed = True
        for scope, rule, cost in checks if distinct else merge_checks(checks):
            key: BucketKey = (scope, rule.name, rule.window_seconds)
            tat = max(tats.get(key, now), now)
            need = cost if cost < rule.limit else rule.limit
            late = (tat - now) + (need if need > 1 else 1) * rule.interval - rule.window_seconds
            if late > EPS:
                allowed = False
            read.append((key, scope, rule, cost, tat, late))
        states = []
        for bucket, scope, rule, cost, before, late in read:
            tat = before
            if allowed and cost > 0:
                tat = before + cost * rule.interval
                tats[bucket] = tat
            states.append(rule_state(scope, rule, tat - now, late))
        if len(tats) + len(self._leases) >= self._sweep_at:
            self._maybe_sweep(now)
        return Decision(allowed, states)

    async def settle(self, scope: Scope, rule: Rule, delta: int) -> None:
        if delta == 0:
            return
        now = self._clock()
        key = _bucket(scope, rule)
        tat = max(self._tats.get(key, now), now) + delta * rule.interval
        if tat > now:
            self._tats[key] = tat
        else:
            self._tats.pop(key, None)  # refunded past full: the bucket is simply full

    async def acquire(self, scope: Scope, limit: int, ttl_seconds: float) -> bool:
        now = self._clock()
        leases = self._live(scope, now)
        if len(leases) >= limit:
            self._leases[scope] = leases  # _live took them out: put them back
            return False
        bisect.insort(leases, now + ttl_seconds)
        self._leases[scope] = leases
        self._maybe_sweep(now)
        return True

    async def release(self, scope: Scope) -> None:
        self._release(scope)

    def release_soon(self, scopes: Sequence[Scope]) -> None:
        for scope in scopes:
            self._release(scope)

    def _release(self, scope: Scope) -> None:
        leases = self._live(scope, self._clock())
        if leases:
            del leases[0]
        if leases:
            self._leases[scope] = leases

    async def aclose(self) -> None:
        self._tats.clear()
        self._leases.clear()

    def _live(self, scope: Scope, now: float) -> list[float]:
        """The scope's unexpired leases, taken out of the table (the caller puts them back).
        Deadlines are kept sorted, so dropping the expired ones costs only what is dropped."""
        leases = self._leases.pop(scope, None)
        if leases is None:
            return []
        expired = bisect.bisect_right(leases, now)
        if expired:
            del leases[:expired]
        return leases

    def _maybe_sweep(self, now: float) -> None:
        if len(self._tats) + len(self._leases) < self._sweep_at:
            return
        self._tats = {k: t for k, t in self._tats.items() if t > now}
        for scope in list(self._leases):
            live = self._live(scope, now)
            if live:
                self._leases[scope] = live
        self._sweep_at = max(_MIN_SWEEP, 2 * (len(self._tats) + len(self._leases)))

    def __len__(self) -> int:
        """Buckets and lease tables held (for tests and metrics)."""
        return len(self._tats) + len(self._leases)

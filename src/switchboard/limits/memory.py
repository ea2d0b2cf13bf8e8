"""The in-process limiter: GCRA buckets and expiring leases in dicts, for a single worker.

    admit ──▶ read every bucket ──▶ all fit? ──yes──▶ write every bucket ──▶ Decision
                                         └──no───▶ write nothing ─────────▶ Decision

Every method runs without awaiting, so on one event loop each call is atomic. Limits do not hold
across workers or replicas: use `RedisLimiter` there.

A bucket is a `Bucket` object and a scope's leases one `Leases` list, each made once and kept in
its table, so `limits.local` can hold them directly and skip the table lookups. Memory stays
bounded: a bucket whose ``tat`` has passed is full and carries no information, an expired lease
holds no slot; both are swept once the tables double in size since the last sweep. A sweep
counts as a new ``generation``: whoever holds buckets or lease lists fetches them again.
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


class Bucket:
    """One (scope, rule name, window)'s GCRA state: the theoretical arrival time."""

    __slots__ = ("tat",)

    def __init__(self, tat: float) -> None:
        self.tat = tat


Leases = list[float]  # one scope's lease deadlines, sorted


def drop_expired(leases: Leases, now: float) -> None:
    """Remove the deadlines not after ``now``; being sorted, this costs only what is dropped."""
    del leases[: bisect.bisect_right(leases, now)]


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.generation = 0  # bumped by every sweep, which drops buckets and lease lists
        self._buckets: dict[BucketKey, Bucket] = {}
        self._leases: dict[Scope, Leases] = {}
        self._sweep_at = _MIN_SWEEP

    def bucket(self, scope: Scope, rule: Rule) -> Bucket:
        """The bucket's state object, kept until a sweep (made full if new)."""
        key = (scope, rule.name, rule.window_seconds)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = Bucket(0.0)
        return found

    def leases(self, scope: Scope) -> Leases:
        """The scope's lease list, kept until a sweep (made empty if new)."""
        found = self._leases.get(scope)
        if found is None:
            found = self._leases[scope] = []
        return found

    async def admit(self, checks: Sequence[Check], *, distinct: bool = False) -> Decision:
        # One pass to read, one to write. ``late`` is the module docstring's formula (base.py),
        # in the same order of operations as the Lua script in redis.py, so both backends round
        # alike.
        now = self.clock()
        buckets = self._buckets
        read: list[tuple[BucketKey, Bucket | None, Scope, Rule, int, float, float]] = []
        allowed = True
        for scope, rule, cost in checks if distinct else merge_checks(checks):
            key: BucketKey = (scope, rule.name, rule.window_seconds)
            found = buckets.get(key)
            tat = now if found is None or found.tat < now else found.tat
            need = cost if cost < rule.limit else rule.limit
            late = (tat - now) + (need if need > 1 else 1) * rule.interval - rule.window_seconds
            if late > EPS:
                allowed = False
            read.append((key, found, scope, rule, cost, tat, late))
        states = []
        for key, found, scope, rule, cost, before, late in read:
            tat = before
            if allowed and cost > 0:
                tat = before + cost * rule.interval
                if found is None:
                    buckets[key] = Bucket(tat)
                else:
                    found.tat = tat
            states.append(rule_state(scope, rule, tat - now, late))
        if len(buckets) + len(self._leases) >= self._sweep_at:
            self.maybe_sweep(now)
        return Decision(allowed, states)

    async def settle(self, scope: Scope, rule: Rule, delta: int) -> None:
        if delta == 0:
            return
        now = self.clock()
        bucket = self.bucket(scope, rule)
        # Refunded past full, the bucket is simply full: any tat before now means that.
        bucket.tat = max(bucket.tat, now) + delta * rule.interval

    async def acquire(self, scope: Scope, limit: int, ttl_seconds: float) -> bool:
        now = self.clock()
        leases = self._live(scope, now)
        if len(leases) >= limit:
            return False
        bisect.insort(leases, now + ttl_seconds)
        self.maybe_sweep(now)
        return True

    async def release(self, scope: Scope) -> None:
        self._release(scope)

    def release_soon(self, scopes: Sequence[Scope]) -> None:
        for scope in scopes:
            self._release(scope)

    def _release(self, scope: Scope) -> None:
        leases = self._live(scope, self.clock())
        if leases:
            del leases[0]

    async def aclose(self) -> None:
        self._buckets.clear()
        self._leases.clear()
        self.generation += 1

    def _live(self, scope: Scope, now: float) -> Leases:
        """The scope's unexpired leases. Deadlines are kept sorted, so dropping the expired
        ones costs only what is dropped."""
        leases = self.leases(scope)
        if leases and leases[0] <= now:
            drop_expired(leases, now)
        return leases

    def maybe_sweep(self, now: float) -> None:
        """Drop full buckets and empty lease lists once the tables doubled since the last
        sweep."""
        if len(self._buckets) + len(self._leases) < self._sweep_at:
            return
        self._buckets = {k: b for k, b in self._buckets.items() if b.tat > now}
        for scope in list(self._leases):
            if not self._live(scope, now):
                del self._leases[scope]
        self.generation += 1
        self._sweep_at = max(_MIN_SWEEP, 2 * (len(self._buckets) + len(self._leases)))

    def __len__(self) -> int:
        """Buckets and lease tables held (for tests and metrics)."""
        return len(self._buckets) + len(self._leases)

"""The shared limiter: the same GCRA buckets and leases in Redis, so limits hold across replicas.

    admit ──EVALSHA admit.lua (every check of the request, one round trip)──▶ Redis
             TIME ─▶ read all buckets ─▶ all fit? ─▶ SET each tat PX <until full> ─▶ reply

Time is the Redis server's ``TIME`` inside the script, so replicas with skewed clocks agree.
A script runs atomically, so two replicas can never both take the last unit. The keys of one
request must live on one Redis (multi-key scripts do not span Redis Cluster slots).

    sb:rl:b:<scope>:<rule name>:<window>   string: tat, absolute server seconds, expires when full
    sb:rl:c:<scope>                        zset: lease id -> deadline, expires with its last lease

Failure mode: when Redis cannot be reached or answers with an error, the limiter *fails open*
by default: ``admit`` allows with ``Decision(degraded=True)`` and no states (so no headers),
``acquire`` grants, ``settle`` and ``release`` are dropped, and one warning is logged per
outage (one info line on recovery). A dead limiter store then costs limits, not the gateway.
``fail_open=False`` raises `LimiterUnavailable` (HTTP 503) instead. Socket timeouts are short
(``timeout``) so an outage adds little to a request; the connection pool is bounded
(``max_connections``), so a burst waits for a connection rather than opening hundreds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from switchboard.limits.base import (
    EPS,
    Check,
    Decision,
    LimiterUnavailable,
    Rule,
    Scope,
    merge_checks,
    rule_state,
)

log = logging.getLogger("switchboard.limits")
T = TypeVar("T")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
"""

# KEYS: one bucket per check. ARGV[1] = EPS, then (limit, window, cost) per check.
# Returns {allowed, backlog_1, late_1, backlog_2, late_2, ...}; floats as strings.
ADMIT = (
    _NOW
    + """
local eps = tonumber(ARGV[1])
local tats, lates, allowed = {}, {}, 1
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local interval = window / limit
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local need = math.max(math.min(cost, limit), 1)
  local late = (tat - now) + need * interval - window
  if late > eps then allowed = 0 end
  tats[i], lates[i] = tat, late
end
local out = {allowed}
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local tat = tats[i]
  if allowed == 1 and cost > 0 then
    tat = tat + cost * (window / limit)
    redis.call('SET', KEYS[i], fmt(tat), 'PX', math.ceil((tat - now) * 1000) + 1)
  end
  out[#out + 1] = fmt(tat - now)
  out[#out + 1] = fmt(lates[i])
end
return out
"""
)

# KEYS[1]: the bucket. ARGV: limit, window, delta.
SETTLE = (
    _NOW
    + """
local interval = tonumber(ARGV[2]) / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
tat = tat + tonumber(ARGV[3]) * interval
if tat > now then
  redis.call('SET', KEYS[1], fmt(tat), 'PX', math.ceil((tat - now) * 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return 1
"""
)

# KEYS[1]: the lease set. ARGV: limit, ttl seconds, lease id. Returns 1 if a slot was taken.
ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], fmt(now + tonumber(ARGV[2])), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) * 1000) + 1)
return 1
"""
)


class RedisLimiter:
    def __init__(
        self,
        url: str,
        prefix: str = "sb:rl:",
        *,
        fail_open: bool = True,
        timeout: float = 0.5,
        max_connections: int = 32,
    ) -> None:
        self.prefix = prefix
        self.fail_open = fail_open
        # A bounded pool: a burst of requests queues for a connection (up to ``timeout``)
        # instead of opening one socket per request in flight. One retry without backoff
        # covers a pooled connection that went stale.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._redis: Redis = Redis.from_pool(pool)
        self._admit = self._redis.register_script(ADMIT)
        self._settle = self._redis.register_script(SETTLE)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._leases: dict[Scope, deque[str]] = {}  # this process's lease ids, oldest first
        self._pending: set[asyncio.Task[None]] = set()  # releases under way
        self._failing = False

    def bucket_key(self, scope: Scope, rule: Rule) -> str:
        return f"{self.prefix}b:{scope}:{rule.name}:{rule.window_seconds}"

    def lease_key(self, scope: Scope) -> str:
        return f"{self.prefix}c:{scope}"

    async def admit(self, checks: Sequence[Check], *, distinct: bool = False) -> Decision:
        merged = list(checks) if distinct else merge_checks(checks)
        if not merged:
            return Decision(allowed=True)
        keys = [self.bucket_key(scope, rule) for scope, rule, _ in merged]
        args: list[str | int] = [repr(EPS)]
        for _, rule, cost in merged:
            args += [rule.limit, rule.window_seconds, cost]
        reply = await self._guard("admit", self._admit(keys=keys, args=args), None)
        if reply is None:
            return Decision(allowed=True, degraded=True)
        states = [
            rule_state(scope, rule, float(reply[1 + 2 * i]), float(reply[2 + 2 * i]))
            for i, (scope, rule, _) in enumerate(merged)
        ]
        return Decision(allowed=int(reply[0]) == 1, states=states)

    async def settle(self, scope: Scope, rule: Rule, delta: int) -> None:
        if delta == 0:
            return
        args = [rule.limit, rule.window_seconds, delta]
        call = self._settle(keys=[self.bucket_key(scope, rule)], args=args)
        await self._guard("settle", call, None)

    async def acquire(self, scope: Scope, limit: int, ttl_seconds: float) -> bool:
        lease = secrets.token_hex(8)
        call = self._acquire(keys=[self.lease_key(scope)], args=[limit, repr(ttl_seconds), lease])
        taken = await self._guard("acquire", call, None)
        if taken is None:
            return True  # failed open: no lease to give back later
        if int(taken) != 1:
            return False
        self._leases.setdefault(scope, deque()).append(lease)
        return True

    async def release(self, scope: Scope) -> None:
        held = self._leases.get(scope)
        if not held:
            return
        lease = held.popleft()
        if not held:
            del self._leases[scope]
        await self._guard("release", self._redis.zrem(self.lease_key(scope), lease), None)

    def release_soon(self, scopes: Sequence[Scope]) -> None:
        task = asyncio.ensure_future(self._release_all(list(scopes)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release_all(self, scopes: list[Scope]) -> None:
        for scope in scopes:
            await self.release(scope)  # fails open by itself: the lease then expires

    @property
    def redis(self) -> Redis:
        """The client, shared with `RedisBudgets` (one pool per process)."""
        return self._redis

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=5)
        await self._redis.aclose()

    async def guard(self, what: str, call: Awaitable[T], fallback: T) -> T:
        """Await ``call``; on a store failure fail open (``fallback``) or raise, as set."""
        return await self._guard(what, call, fallback)

    async def _guard(self, what: str, call: Awaitable[T], fallback: T) -> T:
        try:
            result = await call
        except (RedisError, OSError) as exc:
            if not self.fail_open:
                raise LimiterUnavailable(f"rate limiter store unavailable ({what}): {exc}") from exc
            if not self._failing:
                log.warning("rate limiter store unavailable, failing open (%s): %s", what, exc)
                self._failing = True
            return fallback
        if self._failing:
            log.info("rate limiter store reachable again")
            self._failing = False
        return result

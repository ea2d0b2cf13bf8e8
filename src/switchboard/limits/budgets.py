"""Monthly spend budgets: reserve the worst case before the upstream, settle the real cost after.

    reserve ──▶ every scope: spent + amount <= limit? ──all──▶ spent += amount ──▶ allowed
                                                       └─any─▶ write nothing ───▶ refused
    settle  ──▶ spent += real cost - reserved         (after the request or stream ends)

Each (scope, month) is one integer counter in nano-dollars: the month's settled spend plus the
reservations of requests still in flight. Because a request reserves its most expensive outcome
before it starts, concurrent and streamed requests cannot together spend past the limit: the
last one that fits is admitted and every later one is refused until settlements give back what
was reserved and not spent.

A counter the store does not hold yet (first request of the month, a restarted single worker, a
Redis that lost its data) is *missing*: ``reserve`` says which, the caller seeds them from the
usage ledger (``seed`` only sets a counter that is still absent, so replicas racing to seed
agree), and asks again. Months are UTC calendar months (``YYYY-MM``); counters expire 40 days
after their last write.

``mark`` records that an alert (a threshold crossed, the limit hit) was sent for a scope and
month, once across every replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from switchboard.limits.redis import RedisLimiter
from switchboard.store.spend import month_bounds

NANO = 1_000_000_000  # nano-dollars per dollar
TTL_SECONDS = 40 * 86_400


def to_nano(usd: float) -> int:
    return round(usd * NANO)


# The last month `month_of` named: (its first instant, the next month's, its text), in UTC.
_last_month = [(datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC), "")]


def month_of(when: datetime) -> str:
    """``"2026-11"``: the UTC calendar month. This runs per budgeted request, and nearly every
    request falls in the month the one before it did: two comparisons answer it then."""
    start, end, text = _last_month[0]
    if when.tzinfo is UTC and start <= when < end:
        return text
    if when.utcoffset():
        when = when.astimezone(UTC)
    text = f"{when.year:04d}-{when.month:02d}"
    _last_month[0] = (*month_bounds(text), text)
    return text


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class BudgetCheck:
    scope: str  # "tenant:<id>", "key:<id>", "user:<tenant>:<user>"
    month: str
    limit: int  # nano-dollars
    amount: int  # nano-dollars to reserve


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class BudgetDecision:
    allowed: bool
    spent: list[int] = field(default_factory=list)  # per check: after reserving, or as found
    missing: list[int] = field(default_factory=list)  # indexes of checks to seed first
    degraded: bool = False  # the store was unreachable and the budget failed open


class BudgetStore(Protocol):
    async def reserve(self, checks: Sequence[BudgetCheck]) -> BudgetDecision: ...

    async def seed(self, scope: str, month: str, spent: int) -> None: ...

    async def settle(self, scope: str, month: str, delta: int) -> int | None:
        """Add ``delta`` (real minus reserved); the new total, or None if the store failed."""
        ...

    async def mark(self, scope: str, month: str, what: str) -> bool:
        """True the first time ``what`` is marked for this scope and month, on any replica."""
        ...

    async def spent(self, scope: str, month: str) -> int | None: ...


class MemoryBudgets:
    """Counters in a dict, for a single worker: every call runs without awaiting (atomic)."""

    def __init__(self) -> None:
        # Public for `limits.local`, which reserves on the same counters in one call.
        self.counters: dict[tuple[str, str], int] = {}  # (scope, month) -> nano-dollars
        self._marks: set[tuple[str, str, str]] = set()

    async def reserve(self, checks: Sequence[BudgetCheck]) -> BudgetDecision:
        if len(checks) == 1:  # the common case, without the lists
            check = checks[0]
            key = (check.scope, check.month)
            spent = self.counters.get(key)
            if spent is None:
                return BudgetDecision(allowed=False, missing=[0])
            if spent + check.amount > check.limit:
                return BudgetDecision(allowed=False, spent=[spent])
            self.counters[key] = spent = spent + check.amount
            return BudgetDecision(allowed=True, spent=[spent])
        keys = [(c.scope, c.month) for c in checks]
        missing = [i for i, k in enumerate(keys) if k not in self.counters]
        if missing:
            return BudgetDecision(allowed=False, missing=missing)
        current = [self.counters[k] for k in keys]
        if any(s + c.amount > c.limit for s, c in zip(current, checks, strict=True)):
            return BudgetDecision(allowed=False, spent=current)
        for key, check in zip(keys, checks, strict=True):
            self.counters[key] += check.amount
        return BudgetDecision(allowed=True, spent=[self.counters[k] for k in keys])

    async def seed(self, scope: str, month: str, spent: int) -> None:
        self.counters.setdefault((scope, month), spent)

    async def settle(self, scope: str, month: str, delta: int) -> int | None:
        key = (scope, month)
        if key not in self.counters:
            return None  # never reserved here (a restart): the ledger is the truth at seeding
        self.counters[key] += delta
        return self.counters[key]

    async def mark(self, scope: str, month: str, what: str) -> bool:
        key = (scope, month, what)
        if key in self._marks:
            return False
        self._marks.add(key)
        return True

    async def spent(self, scope: str, month: str) -> int | None:
        return self.counters.get((scope, month))


# KEYS: one counter per check. ARGV[1] = TTL seconds, then (limit, amount) per check.
# Returns {-1, i, j, ...} when counters i, j... are missing (seed them), else
# {allowed, spent_1, spent_2, ...}.
RESERVE = """
local values, missing = {}, {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then values[i] = tonumber(v) else missing[#missing + 1] = i end
end
if #missing > 0 then
  local out = {-1}
  for _, i in ipairs(missing) do out[#out + 1] = i end
  return out
end
local allowed = 1
for i = 1, #KEYS do
  if values[i] + tonumber(ARGV[2 * i + 1]) > tonumber(ARGV[2 * i]) then allowed = 0 end
end
local out = {allowed}
for i = 1, #KEYS do
  if allowed == 1 then
    values[i] = redis.call('INCRBY', KEYS[i], ARGV[2 * i + 1])
    redis.call('EXPIRE', KEYS[i], ARGV[1])
  end
  out[#out + 1] = values[i]
end
return out
"""

# KEYS[1]: the counter. ARGV: delta, TTL seconds. Returns the new total, or false if missing.
SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return v
"""


class RedisBudgets:
    """The same counters in Redis, shared by every replica; one round trip per reservation.
    Uses the limiter's connection pool and its failure mode (fail open or raise)."""

    def __init__(self, limiter: RedisLimiter, prefix: str | None = None) -> None:
        self._limiter = limiter
        self._redis = limiter.redis
        self.prefix = prefix if prefix is not None else limiter.prefix + "budget:"
        self._reserve = self._redis.register_script(RESERVE)
        self._settle = self._redis.register_script(SETTLE)

    def key(self, scope: str, month: str) -> str:
        return f"{self.prefix}{scope}:{month}"

    async def reserve(self, checks: Sequence[BudgetCheck]) -> BudgetDecision:
        keys = [self.key(c.scope, c.month) for c in checks]
        args: list[int] = [TTL_SECONDS]
        for check in checks:
            args += [check.limit, check.amount]
        reply = await self._limiter.guard("reserve", self._reserve(keys=keys, args=args), None)
        if reply is None:
            return BudgetDecision(allowed=True, degraded=True)
        if int(reply[0]) == -1:
            return BudgetDecision(allowed=False, missing=[int(i) - 1 for i in reply[1:]])
        return BudgetDecision(allowed=int(reply[0]) == 1, spent=[int(v) for v in reply[1:]])

    async def seed(self, scope: str, month: str, spent: int) -> None:
        call = self._redis.set(self.key(scope, month), spent, nx=True, ex=TTL_SECONDS)
        await self._limiter.guard("seed", call, None)

    async def settle(self, scope: str, month: str, delta: int) -> int | None:
        call = self._settle(keys=[self.key(scope, month)], args=[delta, TTL_SECONDS])
        value = await self._limiter.guard("settle", call, None)
        return None if value is None else int(value)

    async def mark(self, scope: str, month: str, what: str) -> bool:
        call = self._redis.set(f"{self.key(scope, month)}:{what}", 1, nx=True, ex=TTL_SECONDS)
        return bool(await self._limiter.guard("mark", call, None))

    async def spent(self, scope: str, month: str) -> int | None:
        value = await self._limiter.guard("spent", self._redis.get(self.key(scope, month)), None)
        return None if value is None else int(value)

"""The sign-in throttle in Redis, shared by every worker and replica (see `auth.throttle`).

    check    ──EVALSHA (one round trip)──▶ trim both counts ─▶ either full? ─▶ seconds to wait
                                                                └─ no ──▶ reserve an attempt
    failed   ──EVALSHA──▶ end one attempt, add a failure to both counts, trim, expire
    succeeded ─EVALSHA──▶ delete the per-address failures, end one attempt in both counts

Each count is two sorted sets of (random member, time): its failures within the window (at
most the allowance, newest kept) and its attempts under way (``ATTEMPT_SECONDS``). A sliding
window, so ``Retry-After`` is exact: when the oldest failure of a full count leaves it. Every
write sets the key's expiry, so a count vanishes a window after its last failure.

    <prefix>{<account>}:f   <prefix>{<account>}:a            per account: failures, attempts
    <prefix>{<account>}:<address>:f   ...:<address>:a        per address

``<account>`` and ``<address>`` are keyed hashes (HMAC-SHA-256 under a key derived from the
session signing secret, which every replica shares), so Redis never holds an e-mail, a user
name or an address, and a dictionary of e-mails cannot be matched against the keys without
the secret. The braces keep one account's keys in one Redis Cluster slot.

Time is the Redis server's ``TIME`` inside the scripts (replicas with skewed clocks agree),
unless a clock is passed in (tests). Calls go through the limiter's connection pool and its
failure mode: with Redis unreachable the throttle fails open (every check passes, nothing is
counted) with one warning per outage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from switchboard.auth.throttle import ATTEMPT_SECONDS, LoginAllowance, LoginKey, login_throttled
from switchboard.limits import RedisLimiter

# ARGV[1]: now in seconds, or negative for the server's clock.
_NOW = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: address failures, address attempts, account failures, account attempts.
# ARGV: now, window, attempt seconds, per-address allowance, per-account allowance, member.
# Returns 0 when the attempt is reserved, else the seconds to wait (a string).
CHECK = (
    _NOW
    + """
local window, hold = tonumber(ARGV[2]), tonumber(ARGV[3])
local wait = 0
for s = 0, 1 do
  local failures, attempts = KEYS[2 * s + 1], KEYS[2 * s + 2]
  redis.call('ZREMRANGEBYSCORE', failures, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', attempts, '-inf', now - hold)
  if redis.call('ZCARD', failures) + redis.call('ZCARD', attempts) >= tonumber(ARGV[4 + s]) then
    local frees = math.huge
    local oldest = redis.call('ZRANGE', failures, 0, 0, 'WITHSCORES')
    if oldest[2] then frees = tonumber(oldest[2]) + window end
    oldest = redis.call('ZRANGE', attempts, 0, 0, 'WITHSCORES')
    if oldest[2] then frees = math.min(frees, tonumber(oldest[2]) + hold) end
    wait = math.max(wait, frees - now)
  end
end
if wait > 0 then return string.format('%.17g', wait) end
for s = 0, 1 do
  redis.call('ZADD', KEYS[2 * s + 2], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[2 * s + 2], math.ceil(hold * 1000))
end
return 0
"""
)

# KEYS and ARGV as CHECK's.
FAILED = (
    _NOW
    + """
local window = tonumber(ARGV[2])
for s = 0, 1 do
  local failures = KEYS[2 * s + 1]
  redis.call('ZPOPMIN', KEYS[2 * s + 2])
  redis.call('ZADD', failures, now, ARGV[6])
  redis.call('ZREMRANGEBYSCORE', failures, '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', failures, 0, -tonumber(ARGV[4 + s]) - 1)
  redis.call('PEXPIRE', failures, math.ceil(window * 1000))
end
return 1
"""
)

# KEYS as CHECK's.
SUCCEEDED = """
redis.call('DEL', KEYS[1])
redis.call('ZPOPMIN', KEYS[2])
redis.call('ZPOPMIN', KEYS[4])
return 1
"""


class RedisLoginThrottle:
    def __init__(
        self,
        limiter: RedisLimiter,
        allowance: LoginAllowance,
        *,
        secret: bytes,
        prefix: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._limiter = limiter
        self._allowance = allowance
        self._hash_key = hmac.new(secret, b"switchboard login throttle", hashlib.sha256).digest()
        self.prefix = prefix if prefix is not None else limiter.prefix + "login:"
        self._clock = clock
        redis = limiter.redis
        self._check = redis.register_script(CHECK)
        self._failed = redis.register_script(FAILED)
        self._succeeded = redis.register_script(SUCCEEDED)

    def keys(self, key: LoginKey) -> list[str]:
        """The Redis keys of ``key``'s counts: address failures and attempts, then the
        account's."""
        account = f"{self.prefix}{{{self._hash(key.tenant, key.account)}}}:"
        address = f"{account}{self._hash(key.address)}:"
        return [address + "f", address + "a", account + "f", account + "a"]

    async def check(self, key: LoginKey) -> None:
        call = self._check(keys=self.keys(key), args=self._args())
        wait = await self._limiter.guard("login check", call, 0)
        if float(wait) > 0:
            raise login_throttled(float(wait))

    async def failed(self, key: LoginKey) -> None:
        call = self._failed(keys=self.keys(key), args=self._args())
        await self._limiter.guard("login failure", call, None)

    async def succeeded(self, key: LoginKey) -> None:
        await self._limiter.guard("login success", self._succeeded(keys=self.keys(key)), None)

    def _args(self) -> list[str | int]:
        allowance = self._allowance
        return [
            repr(self._clock()) if self._clock is not None else -1,
            repr(allowance.window_seconds),
            repr(ATTEMPT_SECONDS),
            allowance.per_address,
            allowance.per_account,
            secrets.token_hex(8),
        ]

    def _hash(self, *parts: str) -> str:
        message = "\0".join(parts).encode()
        return hmac.new(self._hash_key, message, hashlib.sha256).hexdigest()[:32]

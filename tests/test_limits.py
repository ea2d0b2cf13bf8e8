"""The limiter engine: one suite over both backends (in-process and Redis), plus what only
Redis has (key expiry, script reload, two instances sharing limits, an unreachable server).

The in-process limiter runs on a clock the test moves; the Redis one on the server's clock, so
its windows are short (1 s) and the test sleeps, a little. Redis at 127.0.0.1:6379 is required:
when it is unreachable these tests fail with a clear message, they are never skipped. Each test
uses a fresh key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from conftest import REDIS_URL, Clock, delete_redis_prefix, redis_or_fail
from switchboard.errors import RateLimited
from switchboard.limits import (
    Decision,
    Limiter,
    LimiterUnavailable,
    MemoryLimiter,
    RedisLimiter,
    Rule,
    format_duration,
    headers,
    key_scope,
    rate_limited,
    retry_after,
    tenant_scope,
    user_scope,
)

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once

RPM5 = Rule("requests", 5, 60)
TENANT = tenant_scope("t1")
KEY = key_scope("k1")


@dataclass
class Harness:
    limiter: Limiter
    kind: str
    advance: Callable[[float], Awaitable[None]]
    tol: float  # seconds of real time that may pass between two calls (0 in memory)
    prefix: str = ""

    def approx(self, value: float) -> object:
        return pytest.approx(value, abs=self.tol)


async def _redis_or_fail() -> Redis:
    return await redis_or_fail("the limiter tests")


@pytest.fixture
async def raw_redis() -> AsyncIterator[Redis]:
    client = await _redis_or_fail()
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = Clock()

        async def move(seconds: float) -> None:
            clock.now += seconds

        memory = MemoryLimiter(clock)
        yield Harness(memory, "memory", move, 1e-9)
        await memory.aclose()
        return
    client = await _redis_or_fail()
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    limiter = RedisLimiter(REDIS_URL, prefix, fail_open=False)
    try:
        yield Harness(limiter, "redis", asyncio.sleep, 0.05, prefix)
    finally:
        await limiter.aclose()
        await delete_redis_prefix(client, prefix)
        await client.aclose()


async def admit_n(limiter: Limiter, n: int, checks: list[tuple[str, Rule, int]]) -> Decision:
    decision = Decision(allowed=False)
    for _ in range(n):
        decision = await limiter.admit(checks)
        assert decision.allowed
    return decision


# --- requests -------------------------------------------------------------------------------


async def test_admits_up_to_the_limit_then_refuses(h: Harness) -> None:
    for taken in range(1, 6):
        decision = await h.limiter.admit([(TENANT, RPM5, 1)])
        assert decision.allowed
        [state] = decision.states
        assert (state.scope, state.rule, state.limit) == (TENANT, RPM5, 5)
        assert state.remaining == 5 - taken
        assert state.reset_seconds == h.approx(12 * taken)  # 60 s / 5 = one request per 12 s
        assert state.retry_after_seconds == 0
    refused = await h.limiter.admit([(TENANT, RPM5, 1)])
    assert not refused.allowed
    [state] = refused.states
    assert state.remaining == 0
    assert state.reset_seconds == h.approx(60)
    assert state.retry_after_seconds == h.approx(12)
    assert retry_after(refused) == h.approx(12)
    error = rate_limited(refused)
    assert isinstance(error, RateLimited)
    assert error.status_code == 429
    assert error.retry_after == h.approx(12)
    assert "tenant:t1" in error.message
    assert "5 requests per 1m0s" in error.message


async def test_no_checks_is_allowed_without_state(h: Harness) -> None:
    decision = await h.limiter.admit([])
    assert decision.allowed
    assert decision.states == []
    assert retry_after(decision) == 0
    assert headers(decision) == []


async def test_a_refusal_on_one_scope_consumes_nothing_on_the_others(h: Harness) -> None:
    tenant_rule, key_rule = Rule("requests", 10, 60), Rule("requests", 2, 60)
    tpm = Rule("tokens", 1000, 60)
    checks = [(TENANT, tenant_rule, 1), (KEY, key_rule, 1), (TENANT, tpm, 100)]
    await admit_n(h.limiter, 2, checks)
    refused = await h.limiter.admit(checks)
    assert not refused.allowed
    by_scope = {(s.scope, s.rule.name): s for s in refused.states}
    assert by_scope[(TENANT, "requests")].remaining == 8  # not 7: nothing was taken
    assert by_scope[(TENANT, "requests")].retry_after_seconds == 0  # this one had room
    assert by_scope[(KEY, "requests")].remaining == 0
    assert by_scope[(KEY, "requests")].retry_after_seconds == h.approx(30)
    assert by_scope[(TENANT, "tokens")].remaining == 800

    # A token rule that does not fit refuses the request: the request rules keep their units.
    other_key = key_scope("k2")
    too_big = [(TENANT, tenant_rule, 1), (other_key, key_rule, 1), (TENANT, tpm, 900)]
    refused = await h.limiter.admit(too_big)
    assert not refused.allowed
    assert [s.remaining for s in refused.states] == [8, 2, 800]

    # The tenant still has room through another key.
    allowed = await h.limiter.admit([(TENANT, tenant_rule, 1), (other_key, key_rule, 1)])
    assert allowed.allowed
    assert [s.remaining for s in allowed.states] == [7, 1]


async def test_the_same_bucket_twice_in_one_request_counts_twice(h: Harness) -> None:
    decision = await h.limiter.admit([(TENANT, RPM5, 1), (TENANT, RPM5, 1)])
    assert decision.allowed
    assert [s.remaining for s in decision.states] == [3]


async def test_minute_and_hour_rules_are_separate_buckets(h: Harness) -> None:
    rph = Rule("requests", 3, 3600)
    checks = [(TENANT, RPM5, 1), (TENANT, rph, 1)]
    await admit_n(h.limiter, 3, checks)
    refused = await h.limiter.admit(checks)
    assert not refused.allowed
    minute, hour = refused.states
    assert minute.remaining == 2
    assert hour.remaining == 0
    assert retry_after(refused) == h.approx(1200)  # one request per 20 minutes comes back


async def test_the_window_slides(h: Harness) -> None:
    rps4 = Rule("requests", 4, 1)  # one request comes back every 0.25 s
    slack = 0.0 if h.kind == "memory" else 0.03
    await admit_n(h.limiter, 4, [(TENANT, rps4, 1)])
    refused = await h.limiter.admit([(TENANT, rps4, 1)])
    assert not refused.allowed
    assert retry_after(refused) == h.approx(0.25)

    await h.advance(retry_after(refused) + slack)  # exactly at the boundary (memory)
    again = await h.limiter.admit([(TENANT, rps4, 1)])
    assert again.allowed
    assert again.states[0].remaining == 0
    assert not (await h.limiter.admit([(TENANT, rps4, 1)])).allowed

    await h.advance(1.0 + slack)  # a whole window: the bucket is full again
    full = await h.limiter.admit([(TENANT, rps4, 0)])
    assert full.allowed
    assert full.states[0].remaining == 4
    assert full.states[0].reset_seconds == h.approx(0)
    await admit_n(h.limiter, 4, [(TENANT, rps4, 1)])


# --- tokens ---------------------------------------------------------------------------------


async def test_tokens_cost_their_estimate_and_settle_refunds_or_overruns(h: Harness) -> None:
    tpm = Rule("tokens", 1000, 60)  # one token comes back every 0.06 s
    first = await h.limiter.admit([(TENANT, tpm, 400)])
    assert first.allowed
    assert first.states[0].remaining == 600
    assert first.states[0].reset_seconds == h.approx(24)

    refused = await h.limiter.admit([(TENANT, tpm, 700)])
    assert not refused.allowed
    assert refused.states[0].remaining == 600
    assert refused.states[0].retry_after_seconds == h.approx(6)  # 100 tokens short

    await h.limiter.settle(TENANT, tpm, -300)  # the request used 100 of the 400 estimated
    check = await h.limiter.admit([(TENANT, tpm, 0)])  # cost 0: a check, consumes nothing
    assert check.allowed
    assert check.states[0].remaining == 900
    assert (await h.limiter.admit([(TENANT, tpm, 0)])).states[0].remaining == 900

    await h.limiter.settle(TENANT, tpm, 1500)  # a stream ran far past its estimate: debt
    debt = await h.limiter.admit([(TENANT, tpm, 0)])
    assert not debt.allowed
    assert debt.states[0].remaining == 0
    assert debt.states[0].reset_seconds == h.approx(96)  # 1600 tokens owed at 0.06 s each
    assert retry_after(debt) == h.approx(96 + 0.06 - 60)  # until one token is free


async def test_refunds_never_go_past_a_full_bucket(h: Harness) -> None:
    tpm = Rule("tokens", 1000, 60)
    await h.limiter.settle(TENANT, tpm, -5000)
    await h.limiter.settle(TENANT, tpm, 0)
    decision = await h.limiter.admit([(TENANT, tpm, 1000)])
    assert decision.allowed
    assert decision.states[0].remaining == 0


async def test_a_cost_above_the_limit_passes_on_a_full_bucket_then_leaves_debt(
    h: Harness,
) -> None:
    tpm = Rule("tokens", 1000, 60)
    huge = await h.limiter.admit([(TENANT, tpm, 5000)])
    assert huge.allowed
    assert huge.states[0].remaining == 0
    assert huge.states[0].reset_seconds == h.approx(300)
    after = await h.limiter.admit([(TENANT, tpm, 1)])
    assert not after.allowed
    assert retry_after(after) == h.approx(300 - 60 + 0.06)


# --- concurrency ----------------------------------------------------------------------------


async def test_concurrent_slots_are_acquired_and_released(h: Harness) -> None:
    assert await h.limiter.acquire(KEY, 2, 30)
    assert await h.limiter.acquire(KEY, 2, 30)
    assert not await h.limiter.acquire(KEY, 2, 30)
    assert not await h.limiter.acquire(KEY, 2, 30)  # a refusal gives nothing back
    assert await h.limiter.acquire(key_scope("other"), 2, 30)  # scopes are independent
    await h.limiter.release(KEY)
    assert await h.limiter.acquire(KEY, 2, 30)
    for _ in range(4):  # releasing more than was taken is a no-op, never a negative count
        await h.limiter.release(KEY)
    assert await h.limiter.acquire(KEY, 2, 30)
    assert await h.limiter.acquire(KEY, 2, 30)
    assert not await h.limiter.acquire(KEY, 2, 30)


async def test_a_slot_never_released_expires_after_its_ttl(h: Harness) -> None:
    assert await h.limiter.acquire(KEY, 1, 0.3)  # the worker holding it "crashes"
    assert not await h.limiter.acquire(KEY, 1, 0.3)
    await h.advance(0.35)
    assert await h.limiter.acquire(KEY, 1, 30)  # the leaked slot is back
    assert not await h.limiter.acquire(KEY, 1, 30)


# --- headers and helpers --------------------------------------------------------------------


async def test_headers_show_the_tightest_state_per_rule_name(h: Harness) -> None:
    rph = Rule("requests", 3, 3600)
    tenant_tpm, key_tpm = Rule("tokens", 1000, 60), Rule("tokens", 500, 60)
    checks = [
        (TENANT, Rule("requests", 100, 60), 1),
        (KEY, rph, 1),
        (TENANT, tenant_tpm, 100),
        (KEY, key_tpm, 100),
    ]
    decision = await h.limiter.admit(checks)
    assert decision.allowed
    assert headers(decision) == [
        (b"x-ratelimit-limit-requests", b"3"),
        (b"x-ratelimit-remaining-requests", b"2"),
        (b"x-ratelimit-reset-requests", b"20m0s"),
        (b"x-ratelimit-limit-tokens", b"500"),
        (b"x-ratelimit-remaining-tokens", b"400"),
        (b"x-ratelimit-reset-tokens", b"12s"),
    ]
    only_requests = await h.limiter.admit([(TENANT, RPM5, 1)])
    assert [name for name, _ in headers(only_requests)] == [
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.012, "12ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.913, "17.913s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3661.25, "1h1m1.25s"),
        (-3, "0s"),
    ],
)
def test_durations_read_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rules_and_scopes_are_validated() -> None:
    with pytest.raises(ValueError, match="requests"):
        Rule("bogus", 5, 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        Rule("requests", 0, 60)
    with pytest.raises(ValueError, match="window"):
        Rule("tokens", 5, 0)
    assert user_scope("t1", "alice") == "user:t1:alice"
    long = user_scope("t1", "x" * 1000)
    assert long.startswith("user:t1:sha256-")
    assert len(long) < 100


async def test_a_negative_cost_is_refused(h: Harness) -> None:
    with pytest.raises(ValueError, match="cost"):
        await h.limiter.admit([(TENANT, RPM5, -1)])


# --- memory only ----------------------------------------------------------------------------


async def test_memory_drops_buckets_and_leases_once_they_carry_nothing() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    for i in range(5000):
        assert (await limiter.admit([(f"key:{i}", RPM5, 1)])).allowed
        assert await limiter.acquire(f"key:{i}", 1, 30)
    assert len(limiter) == 10_000
    clock.now += 61  # every bucket is full again, every lease expired
    # A sweep runs once the tables hold twice what was live after the last one (here 16,384).
    for i in range(7000):
        assert (await limiter.admit([(f"user:t:{i}", RPM5, 1)])).allowed
    assert len(limiter) == 7000  # only live buckets are left: the 10,000 stale entries went


# --- redis only -----------------------------------------------------------------------------


async def test_redis_keys_expire_when_they_stop_mattering(raw_redis: Redis) -> None:
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    limiter = RedisLimiter(REDIS_URL, prefix, fail_open=False)
    try:
        await limiter.admit([(TENANT, RPM5, 2)])
        bucket_ttl = await raw_redis.pttl(limiter.bucket_key(TENANT, RPM5))
        assert 23_900 < bucket_ttl <= 24_001  # until the bucket is full: 2 x 12 s
        await limiter.admit([(TENANT, RPM5, 0)])  # a check writes nothing
        assert not await raw_redis.exists(limiter.bucket_key(tenant_scope("t2"), RPM5))
        assert await limiter.acquire(KEY, 3, 5)
        assert 4_900 < await raw_redis.pttl(limiter.lease_key(KEY)) <= 5_001
    finally:
        await limiter.aclose()
        await delete_redis_prefix(raw_redis, prefix)


async def test_redis_reloads_its_script_after_a_flush(raw_redis: Redis) -> None:
    """EVALSHA of an unknown script falls back to loading it (as after a Redis restart)."""
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    limiter = RedisLimiter(REDIS_URL, prefix, fail_open=False)
    try:
        limiter._admit.sha = "0" * 40  # a script Redis has never seen
        assert (await limiter.admit([(TENANT, RPM5, 1)])).allowed
        assert (await limiter.admit([(TENANT, RPM5, 1)])).states[0].remaining == 3
    finally:
        await limiter.aclose()
        await delete_redis_prefix(raw_redis, prefix)


async def test_two_redis_limiters_share_their_limits(raw_redis: Redis) -> None:
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    one, two = (RedisLimiter(REDIS_URL, prefix, fail_open=False) for _ in range(2))
    try:
        results = await asyncio.gather(
            *((one if i % 2 else two).admit([(TENANT, RPM5, 1)]) for i in range(40))
        )
        assert sum(d.allowed for d in results) == 5
        assert await one.acquire(KEY, 1, 30)
        assert not await two.acquire(KEY, 1, 30)
        await two.release(KEY)  # two holds no lease: one's slot stays taken
        assert not await two.acquire(KEY, 1, 30)
        await one.release(KEY)
        assert await two.acquire(KEY, 1, 30)
    finally:
        await one.aclose()
        await two.aclose()
        await delete_redis_prefix(raw_redis, prefix)


async def test_a_burst_queues_for_the_bounded_pool(raw_redis: Redis) -> None:
    """2,000 admits at once through 8 connections: none fails, exactly the limit passes."""
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    limiter = RedisLimiter(REDIS_URL, prefix, fail_open=False, timeout=5, max_connections=8)
    rule = Rule("requests", 100, 3600)
    try:
        results = await asyncio.gather(*(limiter.admit([(TENANT, rule, 1)]) for _ in range(2000)))
        assert sum(d.allowed for d in results) == 100
    finally:
        await limiter.aclose()
        await delete_redis_prefix(raw_redis, prefix)


async def test_unreachable_redis_fails_open_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RedisLimiter(UNREACHABLE, fail_open=True)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="switchboard.limits"):
            for _ in range(3):
                decision = await limiter.admit([(TENANT, RPM5, 1)])
                assert decision.allowed
                assert decision.degraded
                assert decision.states == []
                assert headers(decision) == []
            assert await limiter.acquire(KEY, 1, 30)
            assert await limiter.acquire(KEY, 1, 30)  # nothing is counted while degraded
            await limiter.release(KEY)
            await limiter.settle(TENANT, Rule("tokens", 10, 60), 5)
    finally:
        await limiter.aclose()
    assert time.monotonic() - started < 5
    warnings = [r for r in caplog.records if r.name == "switchboard.limits"]
    assert len(warnings) == 1
    assert "failing open" in warnings[0].getMessage()


async def test_unreachable_redis_fails_closed_when_asked() -> None:
    limiter = RedisLimiter(UNREACHABLE, fail_open=False)
    try:
        with pytest.raises(LimiterUnavailable, match="admit") as raised:
            await limiter.admit([(TENANT, RPM5, 1)])
        assert raised.value.status_code == 503
        assert raised.value.code == "rate_limiter_unavailable"
        with pytest.raises(LimiterUnavailable, match="acquire"):
            await limiter.acquire(KEY, 1, 30)
        with pytest.raises(LimiterUnavailable, match="settle"):
            await limiter.settle(TENANT, RPM5, 1)
    finally:
        await limiter.aclose()

"""The in-process fast path (`limits.local`) decides exactly as the general path does.

Two `RequestLimits` on one moved clock, one with the fast path and one without, get the same
random sequence of admissions (tenants, keys and end users with every kind of limit, some
refused), settlements and clock moves. Every outcome, every x-ratelimit header and, at the end,
every bucket, lease and budget counter must be the same on both sides.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from conftest import Clock
from switchboard.auth.keys import Caller
from switchboard.errors import RateLimited
from switchboard.gateway.budgeting import WorstPrice
from switchboard.gateway.limiting import RequestLimits
from switchboard.gateway.scopes import Demand
from switchboard.limits import MemoryLimiter, Rule
from switchboard.limits.budgets import MemoryBudgets
from switchboard.metering.usage import UsageEvent
from switchboard.policy.limit_set import KeyPolicy
from switchboard.policy.tenant_config import TenantConfig
from switchboard.store.keys import ApiKey
from switchboard.store.tenants import Tenant

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PRICE = WorstPrice(input_per_1m=1_000.0, output_per_1m=2_000.0)


def _callers(rng: random.Random) -> list[Caller]:
    tenants: list[dict[str, Any]] = [
        {"rate_limit_per_minute": 12, "rate_limit_per_hour": 40, "tokens_per_minute": 900},
        {"max_concurrent_requests": 3, "monthly_budget_usd": 2.0},
        {
            "rate_limit_per_minute": 30,
            "tokens_per_minute": 5000,
            "max_concurrent_requests": 4,
            "monthly_budget_usd": 5.0,
            "per_user": {"rate_limit_per_minute": 5, "monthly_budget_usd": 0.8},
        },
    ]
    keys: list[dict[str, Any]] = [
        {},
        {"rate_limit_per_minute": 8, "max_concurrent_requests": 2},
        {"tokens_per_minute": 700, "monthly_budget_usd": 1.0},
    ]
    callers = []
    for t, config in enumerate(tenants):
        tenant = Tenant(f"t{t}", f"t{t}", f"t{t}", "hybrid", NOW)
        for k, policy in enumerate(keys):
            owner = f"usr_{k}" if rng.random() < 0.3 else None
            key = ApiKey(f"k{t}{k}", tenant.id, "key", f"sk-sb-{t}{k}", NOW, None, None, owner)
            callers.append(Caller(key, tenant, TenantConfig(**config), KeyPolicy(**policy)))
    return callers


async def _admit(
    limits: RequestLimits, caller: Caller, user: str | None, demand: Demand
) -> tuple[UsageEvent, str]:
    event = UsageEvent(
        request_id="r",
        tenant_id=caller.tenant.id,
        key_id=caller.key.id,
        user_id=user,
        created_at=NOW,
        endpoint="chat",
    )
    try:
        await limits.admit(caller, event, lambda _: demand, None, lambda *_: PRICE)
    except RateLimited as exc:
        # A budget's Retry-After counts to the month's end on the real clock: not compared.
        wait = "" if exc.code == "budget_exceeded" else exc.retry_after
        return event, f"{type(exc).__name__} {exc.message} {wait} {exc.headers}"
    return event, "admitted"


def _state(limiter: MemoryLimiter, budgets: MemoryBudgets, now: float) -> dict[str, Any]:
    rules = [Rule("requests", 1, 60), Rule("requests", 1, 3600), Rule("tokens", 1, 60)]
    scopes = {
        *(f"tenant:t{t}" for t in range(3)),
        *(f"key:k{t}{k}" for t in range(3) for k in range(3)),
        *(f"user:t2:{u}" for u in ("alice", "bob", "usr_0", "usr_1", "usr_2")),
    }
    buckets = {
        (scope, rule.name, rule.window_seconds): round(max(tat - now, 0.0), 9)
        for scope in scopes
        for rule in rules
        if (tat := limiter.bucket(scope, rule).tat) > now
    }
    # Live leases only: the fast path drops expired ones when it needs the room, not always.
    leases = {scope: sum(d > now for d in limiter.leases(scope)) for scope in scopes}
    return {"buckets": buckets, "leases": leases, "budgets": dict(budgets.counters)}


@pytest.mark.parametrize("seed", range(6))
async def test_the_fast_path_and_the_general_path_agree(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock(5000.0)
    sides = []
    for fast in (True, False):
        limiter, budgets = MemoryLimiter(clock), MemoryBudgets()
        limits = RequestLimits(
            limiter, budgets, settle_every=0.001, lease_seconds=25.0, fast_path=fast
        )
        sides.append((limits, limiter, budgets))
    callers = _callers(rng)
    open_events: list[tuple[UsageEvent, UsageEvent]] = []
    outcomes = {"admitted": 0, "refused": 0}
    for _ in range(400):
        roll = rng.random()
        if roll < 0.6:
            caller = rng.choice(callers)
            user = rng.choice([None, "alice", "bob"])
            demand: Demand = (rng.randint(1, 300), rng.choice([None, 10, 200, 2000]))
            (fast_event, fast_out), (general_event, general_out) = [
                await _admit(limits, caller, user, demand) for limits, _, _ in sides
            ]
            assert fast_out == general_out
            assert fast_event.response_headers == general_event.response_headers
            if fast_out == "admitted":
                outcomes["admitted"] += 1
                open_events.append((fast_event, general_event))
            else:
                outcomes["refused"] += 1
        elif roll < 0.85 and open_events:
            pair = open_events.pop(rng.randrange(len(open_events)))
            tokens, cost = rng.randint(0, 400), rng.choice([0.0, 0.01, 0.2])
            cached = rng.random() < 0.1
            for event, (limits, _, _) in zip(pair, sides, strict=True):
                event.tokens_input, event.cost_usd, event.cached = tokens, cost, cached
                limits.settle(event)
            await asyncio.sleep(0.003)  # both batched settlements run
        else:
            clock.now += rng.choice([0.5, 3.0, 20.0, 200.0])
    assert outcomes["admitted"] > 50  # both paths were exercised
    assert outcomes["refused"] > 20
    fast_state, general_state = (
        _state(limiter, budgets, clock.now) for _, limiter, budgets in sides
    )
    assert fast_state == general_state
    for limits, _, _ in sides:
        await limits.aclose()


async def test_a_sweep_makes_compiled_plans_fetch_their_buckets_again() -> None:
    clock = Clock(5000.0)
    limiter = MemoryLimiter(clock)
    limits = RequestLimits(limiter, MemoryBudgets(), fast_path=True)
    tenant = Tenant("t1", "t1", "t1", "hybrid", NOW)
    key = ApiKey("k1", "t1", "key", "sk-sb-1", NOW, None, None)
    caller = Caller(key, tenant, TenantConfig(rate_limit_per_minute=3))
    for _ in range(3):
        assert (await _admit(limits, caller, None, (1, None)))[1] == "admitted"
    generation = limiter.generation
    clock.now += 61  # the bucket is full again: a sweep may drop it
    for i in range(3000):  # grow the tables past the sweep threshold
        await limiter.acquire(f"key:other{i}", 1, 1)
    assert limiter.generation > generation
    for _ in range(3):
        assert (await _admit(limits, caller, None, (1, None)))[1] == "admitted"
    refused = (await _admit(limits, caller, None, (1, None)))[1]
    assert refused.startswith("RateLimited")  # counted in the live bucket, not a dropped one
    await limits.aclose()

"""Monthly budgets and the request-limits step: one suite over both backends (in-process and
Redis at 127.0.0.1:6379, required), then the admission logic on top of them: tenant, key and
per-user scopes, concurrency leases, budget reservations that cannot overshoot under
concurrency, seeding from the ledger, alerts once per month, and giving back on refusal."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from redis.asyncio import Redis

from conftest import REDIS_URL, delete_redis_prefix, redis_or_fail
from switchboard.auth.keys import Caller
from switchboard.errors import BudgetExceeded, RateLimited
from switchboard.gateway.budgeting import BudgetAlert, WorstPrice
from switchboard.gateway.limiting import RequestLimits
from switchboard.gateway.scopes import Scopes, Subject
from switchboard.limits import MemoryLimiter, RedisLimiter
from switchboard.limits.budgets import (
    NANO,
    BudgetCheck,
    BudgetStore,
    MemoryBudgets,
    RedisBudgets,
    month_of,
    to_nano,
)
from switchboard.metering.usage import UsageEvent
from switchboard.policy.limit_set import NO_KEY_POLICY, KeyPolicy, LimitSet
from switchboard.policy.tenant_config import TenantConfig
from switchboard.store.keys import ApiKey
from switchboard.store.spend import month_bounds
from switchboard.store.tenants import Tenant

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
MONTH = "2026-11"
PRICE = WorstPrice(input_per_1m=1_000.0, output_per_1m=2_000.0)  # $0.001 / $0.002 a token


async def _redis_or_fail() -> Redis:
    return await redis_or_fail("the budget tests")


@dataclass
class Stores:
    limiter: MemoryLimiter | RedisLimiter
    budgets: BudgetStore
    kind: str
    fast_path: bool = True  # in process: admissions that fit decided in one call


@pytest.fixture(params=["memory", "memory-general", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param.startswith("memory"):
        fast = request.param == "memory"
        yield Stores(MemoryLimiter(), MemoryBudgets(), "memory", fast_path=fast)
        return
    client = await _redis_or_fail()
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    limiter = RedisLimiter(REDIS_URL, prefix, fail_open=False)
    try:
        yield Stores(limiter, RedisBudgets(limiter), "redis")
    finally:
        await limiter.aclose()
        await delete_redis_prefix(client, prefix)
        await client.aclose()


# --- the budget stores ----------------------------------------------------------------------


async def test_a_missing_counter_is_reported_then_seeded_once(stores: Stores) -> None:
    budgets = stores.budgets
    check = BudgetCheck("tenant:t1", MONTH, limit=10 * NANO, amount=NANO)
    decision = await budgets.reserve([check])
    assert (decision.allowed, decision.missing) == (False, [0])
    await budgets.seed("tenant:t1", MONTH, 3 * NANO)
    await budgets.seed("tenant:t1", MONTH, 0)  # a second seeder never overwrites
    decision = await budgets.reserve([check])
    assert decision.allowed
    assert decision.spent == [4 * NANO]
    assert await budgets.spent("tenant:t1", MONTH) == 4 * NANO


async def test_reserve_refuses_what_would_pass_the_limit_and_writes_nothing(
    stores: Stores,
) -> None:
    budgets = stores.budgets
    for scope in ("tenant:t1", "key:k1"):
        await budgets.seed(scope, MONTH, 0)
    both = [
        BudgetCheck("tenant:t1", MONTH, limit=10 * NANO, amount=4 * NANO),
        BudgetCheck("key:k1", MONTH, limit=5 * NANO, amount=4 * NANO),
    ]
    assert (await budgets.reserve(both)).allowed
    refused = await budgets.reserve(both)  # the key's 5 cannot take 8
    assert not refused.allowed
    assert refused.spent == [4 * NANO, 4 * NANO]
    assert await budgets.spent("tenant:t1", MONTH) == 4 * NANO  # all or nothing
    exactly = [BudgetCheck("key:k1", MONTH, limit=5 * NANO, amount=NANO)]
    assert (await budgets.reserve(exactly)).allowed  # up to the limit exactly


async def test_settle_corrects_and_reports_the_total(stores: Stores) -> None:
    budgets = stores.budgets
    assert await budgets.settle("tenant:none", MONTH, 5) is None  # never seeded: unknown
    await budgets.seed("tenant:t1", MONTH, 100)
    assert await budgets.settle("tenant:t1", MONTH, -40) == 60
    assert await budgets.settle("tenant:t1", MONTH, 15) == 75


async def test_marks_are_set_once(stores: Stores) -> None:
    assert await stores.budgets.mark("tenant:t1", MONTH, "threshold-80")
    assert not await stores.budgets.mark("tenant:t1", MONTH, "threshold-80")
    assert await stores.budgets.mark("tenant:t1", "2026-12", "threshold-80")


async def test_two_redis_stores_share_counters() -> None:
    client = await _redis_or_fail()
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    first = RedisLimiter(REDIS_URL, prefix, fail_open=False)
    second = RedisLimiter(REDIS_URL, prefix, fail_open=False)
    try:
        a, b = RedisBudgets(first), RedisBudgets(second)
        await a.seed("tenant:t1", MONTH, 0)
        check = [BudgetCheck("tenant:t1", MONTH, limit=3, amount=1)]
        results = [await (a if i % 2 else b).reserve(check) for i in range(5)]
        assert [r.allowed for r in results] == [True, True, True, False, False]
    finally:
        await first.aclose()
        await second.aclose()
        await delete_redis_prefix(client, prefix)
        await client.aclose()


def test_money_and_months() -> None:
    assert to_nano(0.000_000_15) == 150
    assert month_of(datetime(2026, 12, 31, 23, 30, tzinfo=UTC)) == "2026-12"
    # The remembered month must not leak across its bounds, in either direction or zone.
    assert month_of(datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == "2026-12"
    assert month_of(datetime(2027, 1, 1, tzinfo=UTC)) == "2027-01"
    assert month_of(datetime(2026, 12, 1, tzinfo=UTC)) == "2026-12"
    assert month_of(datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC)) == "2026-11"
    paris = timezone(timedelta(hours=1))
    assert month_of(datetime(2026, 12, 1, 0, 30, tzinfo=paris)) == "2026-11"
    assert month_of(datetime(2026, 11, 30, 23, 30, tzinfo=timezone(-timedelta(hours=1)))) == (
        "2026-12"
    )
    assert month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


# --- the request-limits step ----------------------------------------------------------------


def make_caller(
    config: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    *,
    key_id: str = "k1",
    tenant_id: str = "t1",
) -> Caller:
    key = ApiKey(key_id, tenant_id, "test", "sk-sb-xx", NOW, None, None)
    tenant = Tenant(tenant_id, tenant_id, tenant_id, "hybrid", NOW)
    return Caller(
        key,
        tenant,
        TenantConfig.model_validate(config or {}),
        KeyPolicy.model_validate(policy) if policy else NO_KEY_POLICY,
    )


def new_event(caller: Caller, user: str | None = None) -> UsageEvent:
    return UsageEvent(
        request_id=secrets.token_hex(8),
        tenant_id=caller.tenant.id,
        key_id=caller.key.id,
        created_at=NOW,
        endpoint="chat",
        user_id=user,
    )


class Ledger:
    """Stands in for the usage ledger the budgets seed from; records what it was asked."""

    def __init__(self, spent: float = 0.0) -> None:
        self.spent = spent
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, subject: Subject, month: str) -> float:
        self.asked.append((subject.scope, month))
        return self.spent


def limits_for(stores: Stores, **kwargs: Any) -> RequestLimits:
    return RequestLimits(
        stores.limiter, stores.budgets, settle_every=0.01, fast_path=stores.fast_path, **kwargs
    )


async def admit(
    limits: RequestLimits, caller: Caller, *, prompt: int = 10, cap: int | None = 100, **kw: Any
) -> UsageEvent:
    event = new_event(caller, **kw)
    await limits.admit(caller, event, lambda _: (prompt, cap), None, lambda *_: PRICE)
    return event


async def finish(limits: RequestLimits, event: UsageEvent, cost: float, tokens: int = 0) -> None:
    event.cost_usd = cost
    event.tokens_input = tokens
    limits.settle(event)
    await asyncio.sleep(0.05)  # the batched settlement


def _subjects(scopes: Scopes, caller: Caller, user: str | None) -> list[Subject]:
    plan = scopes.plan(caller, user)
    return list(plan.subjects) if plan is not None else []


def test_only_scopes_with_limits_are_checked() -> None:
    assert Scopes().plan(make_caller(), "alice") is None
    found = _subjects(
        Scopes(),
        make_caller({"rate_limit_per_minute": 5, "per_user": {"tokens_per_minute": 9}}, {}),
        "alice",
    )
    assert [s.scope for s in found] == ["tenant:t1", "user:t1:alice"]
    assert found[1].user_id == "alice"
    keyed = _subjects(Scopes(), make_caller({}, {"max_concurrent_requests": 2}), None)
    assert [(s.scope, s.key_id) for s in keyed] == [("key:k1", "k1")]
    owned = make_caller({"per_user": {"rate_limit_per_minute": 1}})
    owned = Caller(replace(owned.key, user_id="usr_1"), owned.tenant, owned.config)
    assert [s.scope for s in _subjects(Scopes(), owned, "declared")] == ["user:t1:usr_1"]
    scopes = Scopes()  # an edited config replaces the cached plan, never stale
    first = _subjects(scopes, make_caller({"rate_limit_per_minute": 5}), None)
    assert [s.limits.rate_limit_per_minute for s in first] == [5]
    assert (
        _subjects(scopes, make_caller({"rate_limit_per_minute": 5}), None)[0].scope == "tenant:t1"
    )
    edited = _subjects(scopes, make_caller({"rate_limit_per_minute": 9}), None)
    assert [s.limits.rate_limit_per_minute for s in edited] == [9]
    assert scopes.plan(make_caller({}), None) is None


def test_a_plan_lists_each_scope_s_checks_leases_and_budgets_once() -> None:
    tenant = {"rate_limit_per_minute": 5, "rate_limit_per_hour": 50, "tokens_per_minute": 900}
    key = {"max_concurrent_requests": 2, "monthly_budget_usd": 10.0}
    plan = Scopes().plan(make_caller(tenant, key), None)
    assert plan is not None
    assert [
        (scope, rule.limit, rule.window_seconds, cost) for scope, rule, cost in plan.request_checks
    ] == [("tenant:t1", 5, 60, 1), ("tenant:t1", 50, 3600, 1)]
    assert [(scope, rule.name, rule.limit) for scope, rule in plan.token_rules] == [
        ("tenant:t1", "tokens", 900)
    ]
    assert plan.leases == (("key:k1", 2),)
    assert [s.scope for s in plan.budgeted] == ["key:k1"]


async def test_key_and_tenant_request_limits_both_apply(stores: Stores) -> None:
    limits = limits_for(stores)
    tenant_wide = {"rate_limit_per_minute": 3}
    first = make_caller(tenant_wide, {"rate_limit_per_minute": 2}, key_id="k1")
    second = make_caller(tenant_wide, key_id="k2")
    await admit(limits, first)
    await admit(limits, first)
    with pytest.raises(RateLimited) as err:
        await admit(limits, first)  # the key's 2
    assert "key:k1" in err.value.message
    await admit(limits, second)  # the tenant still had one left
    with pytest.raises(RateLimited) as err:
        await admit(limits, second)
    assert "tenant:t1" in err.value.message


async def test_each_end_user_gets_their_own_buckets(stores: Stores) -> None:
    limits = limits_for(stores)
    caller = make_caller({"per_user": {"rate_limit_per_minute": 1}})
    await admit(limits, caller, user="alice")
    await admit(limits, caller, user="bob")
    await admit(limits, caller)  # no user named: only the tenant's (none) apply
    with pytest.raises(RateLimited):
        await admit(limits, caller, user="alice")


async def test_concurrency_slots_are_held_until_the_request_ends(stores: Stores) -> None:
    limits = limits_for(stores)
    caller = make_caller({"max_concurrent_requests": 2})
    first = await admit(limits, caller)
    await admit(limits, caller)
    with pytest.raises(RateLimited) as err:
        await admit(limits, caller)
    assert err.value.code == "concurrency_limit_exceeded"
    assert err.value.retry_after == 1
    await finish(limits, first, 0.0)
    await admit(limits, caller)


async def test_a_refusal_gives_back_what_earlier_steps_took(stores: Stores) -> None:
    limits = limits_for(stores, spend=Ledger())
    caller = make_caller(
        {"rate_limit_per_minute": 2, "max_concurrent_requests": 5, "monthly_budget_usd": 0.1}
    )
    with pytest.raises(BudgetExceeded):  # worst case 10*0.001 + 100*0.002 = $0.21
        await admit(limits, caller)
    # Neither the request unit nor the concurrency slot stayed taken:
    for _ in range(2):
        await admit(limits, caller, cap=10)  # $0.03 fits, twice
    with pytest.raises(RateLimited) as err:
        await admit(limits, caller, cap=1)
    assert err.value.code == "rate_limit_exceeded"


async def test_budget_reserves_the_worst_case_and_settles_the_real_cost(stores: Stores) -> None:
    ledger = Ledger(spent=0.5)  # already spent this month, before this process started
    limits = limits_for(stores, spend=ledger)
    caller = make_caller({"monthly_budget_usd": 1.0})
    first = await admit(limits, caller)  # reserves $0.21: 0.71
    second = await admit(limits, caller)  # 0.92
    with pytest.raises(BudgetExceeded) as err:
        await admit(limits, caller)  # 1.13 > 1.0
    assert err.value.status_code == 429
    assert err.value.code == "budget_exceeded"
    assert err.value.error_type == "insufficient_quota"
    assert "tenant:t1" in err.value.message
    assert err.value.retry_after is not None
    assert err.value.retry_after >= 1
    assert ledger.asked == [("tenant:t1", MONTH)]  # seeded once, not per request
    await finish(limits, first, cost=0.01)  # gives back $0.20
    await finish(limits, second, cost=0.02)
    assert await stores.budgets.spent("tenant:t1", MONTH) == to_nano(0.53)
    await admit(limits, caller)  # fits again


async def test_no_max_tokens_reserves_the_default_cap(stores: Stores) -> None:
    limits = limits_for(stores, spend=Ledger(), default_max_tokens=50)
    caller = make_caller({}, {"monthly_budget_usd": 0.2})
    await admit(limits, caller, cap=None)  # 10*0.001 + 50*0.002 = 0.11
    assert await stores.budgets.spent("key:k1", MONTH) == to_nano(0.11)
    with pytest.raises(BudgetExceeded) as err:
        await admit(limits, caller, cap=None)
    assert "key:k1" in err.value.message


async def test_refusals_and_cache_hits_settle_at_zero(stores: Stores) -> None:
    limits = limits_for(stores, spend=Ledger())
    caller = make_caller({"monthly_budget_usd": 1.0, "tokens_per_minute": 1000})
    event = await admit(limits, caller)
    event.refusal_reason = "Security violation"
    await finish(limits, event, cost=0.0, tokens=0)
    cached = await admit(limits, caller)
    cached.cached = True
    await finish(limits, cached, cost=0.0, tokens=500)
    assert await stores.budgets.spent("tenant:t1", MONTH) == 0


async def test_concurrent_requests_never_overshoot_the_budget(stores: Stores) -> None:
    """50 requests at once, each reserving its worst case and really costing between a tenth
    of it and all of it: settled spend never passes the budget."""
    limits = limits_for(stores, spend=Ledger())
    budget = 2.0
    caller = make_caller({"monthly_budget_usd": budget})
    rng = random.Random(7)
    admitted: list[float] = []

    async def one() -> None:
        try:
            event = await admit(limits, caller)
        except BudgetExceeded:
            return
        await asyncio.sleep(rng.uniform(0, 0.05))
        cost = round(rng.uniform(0.021, 0.21), 6)
        admitted.append(cost)
        await finish(limits, event, cost=cost)

    for _ in range(3):  # waves, so settlements free room for later requests
        await asyncio.gather(*(one() for _ in range(50)))
    await asyncio.sleep(0.05)
    assert len(admitted) >= 9  # at least budget / worst case
    assert sum(admitted) <= budget
    assert await stores.budgets.spent("tenant:t1", MONTH) == to_nano(sum(admitted))


async def test_alerts_fire_once_per_scope_and_month(stores: Stores) -> None:
    alerts: list[BudgetAlert] = []

    async def notify(alert: BudgetAlert) -> None:
        alerts.append(alert)

    limits = limits_for(stores, spend=Ledger(), notify=notify)
    caller = make_caller(
        {
            "monthly_budget_usd": 1.0,
            "budget_alert_percent": 50,
            "budget_webhook_url": "http://127.0.0.1:9/hook",
        }
    )
    for cost in (0.3, 0.25, 0.1):  # crosses 50% at the second, stays above at the third
        await finish(limits, await admit(limits, caller), cost=cost)
    await asyncio.sleep(0.02)
    assert [(a.kind, a.scope, a.percent) for a in alerts] == [("threshold", "tenant:t1", 50)]
    assert alerts[0].spent_usd == pytest.approx(0.55)
    assert alerts[0].webhook_url == "http://127.0.0.1:9/hook"
    for _ in range(2):
        with pytest.raises(BudgetExceeded):
            await admit(limits, caller, cap=1000)
    await asyncio.sleep(0.02)
    assert [a.kind for a in alerts] == ["threshold", "exceeded"]


def test_limit_sets_know_when_they_are_empty() -> None:
    assert LimitSet().is_empty
    assert not LimitSet(monthly_budget_usd=0).is_empty  # a zero budget refuses everything
    assert [r.window_seconds for r in LimitSet(rate_limit_per_hour=5).request_rules] == [3600]

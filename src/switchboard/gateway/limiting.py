"""The limits step of the pipe: rates, concurrency and monthly budgets for the tenant, the API
key and the end user, taken before routing and settled when the request ends.

    admit ─▶ rates: one limiter call for every scope's requests/min, /hour and tokens/min
          ─▶ concurrency: one lease per scope with max_concurrent_requests
          ─▶ budgets: reserve the worst-case cost in every scope with a monthly budget
          refused at any step ─▶ give back what earlier steps took ─▶ 429 in the caller's
          protocol (rate_limit_exceeded | concurrency_limit_exceeded | budget_exceeded)
    settle (when the usage event is recorded) ─▶ leases released at once; token and budget
          reservations corrected to the real usage and cost, batched every 50 ms

Scopes: the tenant (its config's flat fields), the key (its `KeyPolicy`) and the end user
(``per_user`` in the tenant config; every user of the tenant gets their own buckets). The end
user is the person the key belongs to, or the ``user`` the request names.

Budgets (reservation, settlement, alerts) are `gateway.budgeting`; the scopes and a request's
token demand are `gateway.scopes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from switchboard.auth.keys import Caller
from switchboard.errors import RateLimited
from switchboard.gateway.budgeting import (
    BudgetHold,
    BudgetKeeper,
    Notifier,
    SpendReader,
    WorstPrice,
)
from switchboard.gateway.scopes import Demand, Scopes
from switchboard.limits import Check, Limiter, Rule, Scope, headers, rate_limited
from switchboard.limits.budgets import BudgetStore, to_nano
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.limits")

_SEED_ROUNDS = 3


@dataclass(slots=True)
class Held:
    """What an admitted request holds until its usage event is recorded."""

    checks: Sequence[Check] = ()
    tokens: Sequence[tuple[Scope, Rule, int]] = ()
    leases: list[Scope] = field(default_factory=list)
    budgets: list[BudgetHold] = field(default_factory=list)


class RequestLimits:
    def __init__(
        self,
        limiter: Limiter,
        budgets: BudgetStore | None = None,
        *,
        spend: SpendReader | None = None,
        notify: Notifier | None = None,
        lease_seconds: float = 900.0,
        default_max_tokens: int = 4096,
        settle_every: float = 0.05,
    ) -> None:
        self.limiter = limiter
        self.budgets = (
            None
            if budgets is None
            else BudgetKeeper(
                budgets,
                spend=spend,
                notify=notify,
                default_max_tokens=default_max_tokens,
                spawn=self._spawn,
            )
        )
        self._scopes = Scopes()
        self._lease_seconds = lease_seconds
        self._settle_every = settle_every
        self._owed_tokens: dict[tuple[Scope, Rule], int] = {}
        self._owed_budgets: dict[tuple[Scope, str], tuple[int, BudgetHold]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    async def admit(
        self,
        caller: Caller,
        event: UsageEvent,
        demand: Callable[[], Demand],
        worst_price: Callable[[], WorstPrice],
    ) -> None:
        """``demand`` and ``worst_price`` are only called when a token rule or a budget needs
        them. Raises `RateLimited` or `BudgetExceeded`, having given back what it took."""
        plan = self._scopes.plan(caller, event.user_id)
        if plan is None:
            return
        held = Held(plan.request_checks)
        wanted: Demand | None = None
        if plan.token_rules:
            wanted = demand()
            held.tokens = [(scope, rule, wanted.tokens) for scope, rule in plan.token_rules]
            held.checks = [*plan.request_checks, *held.tokens]
        if held.checks:
            decision = await self.limiter.admit(held.checks, distinct=True)
            event.response_headers = headers(decision)
            if not decision.allowed:
                error = rate_limited(decision)
                error.headers = event.response_headers
                raise error
        try:
            if plan.leases:
                await self._lease(plan.leases, held)
            if plan.budgeted and self.budgets is not None:
                wanted = wanted or demand()
                held.budgets = await self.budgets.reserve(
                    caller, event, plan.budgeted, wanted, worst_price()
                )
        except RateLimited:
            await self._give_back(held)
            raise
        event.admission = held

    async def _lease(self, leases: Sequence[tuple[Scope, int]], held: Held) -> None:
        for scope, most in leases:
            if not await self.limiter.acquire(scope, most, self._lease_seconds):
                raise RateLimited(
                    f"Concurrency limit reached for {scope}: at most {most} requests "
                    "at once; retry when one finishes",
                    retry_after=1,
                    code="concurrency_limit_exceeded",
                )
            held.leases.append(scope)

    async def _give_back(self, held: Held) -> None:
        for scope in held.leases:
            await self.limiter.release(scope)
        for scope, rule, cost in held.checks:
            await self.limiter.settle(scope, rule, -cost)

    def settle(self, event: UsageEvent) -> None:
        """Release the request's leases and correct its reservations to what it really used
        and cost. Corrections are summed per bucket and applied every ``settle_every`` seconds,
        off the hot path."""
        held = event.admission
        if held is None:
            return
        event.admission = None
        if held.leases:
            self.limiter.release_soon(held.leases)
        skipped = event.cached or event.refusal_reason is not None
        used = 0 if skipped else event.tokens_input + event.tokens_output
        for scope, rule, reserved in held.tokens:
            if used != reserved:
                key = (scope, rule)
                self._owed_tokens[key] = self._owed_tokens.get(key, 0) + used - reserved
        cost = 0 if skipped else to_nano(event.cost_usd)
        for hold in held.budgets:
            key2 = (hold.subject.scope, hold.month)
            owed, _ = self._owed_budgets.get(key2, (0, hold))
            self._owed_budgets[key2] = (owed + cost - hold.amount, hold)
        if (self._owed_tokens or self._owed_budgets) and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self._settle_every, self._start_flush)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        tokens, self._owed_tokens = self._owed_tokens, {}
        budgets, self._owed_budgets = self._owed_budgets, {}
        self._spawn(self._flush(tokens, budgets))

    async def _flush(
        self,
        tokens: dict[tuple[Scope, Rule], int],
        budgets: dict[tuple[Scope, str], tuple[int, BudgetHold]],
    ) -> None:
        for (scope, rule), delta in tokens.items():
            if delta:
                try:
                    await self.limiter.settle(scope, rule, delta)
                except Exception as exc:  # a settlement is best effort; the next one goes on
                    log.warning("settling %s tokens for %s failed: %s", delta, scope, exc)
        for (scope, month), (delta, hold) in budgets.items():
            try:
                assert self.budgets is not None
                await self.budgets.settle(scope, month, delta, hold)
            except Exception as exc:
                log.warning("settling the budget of %s failed: %s", scope, exc)

    async def aclose(self) -> None:
        if self._owed_tokens or self._owed_budgets:
            self._start_flush()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.limiter.aclose()

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
token demand are `gateway.scopes`. With both stores in process, an admission that fits is
decided in one synchronous call (`limits.local`); refusals, and every admission on Redis, take
the general path below.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from switchboard.auth.keys import Caller
from switchboard.errors import RateLimited
from switchboard.gateway.budgeting import (
    BudgetKeeper,
    Notifier,
    SpendReader,
    WorstPrice,
)
from switchboard.gateway.scopes import Demand, Plan, Scopes, Subject
from switchboard.limits import Check, Limiter, MemoryLimiter, Rule, Scope, headers, rate_limited
from switchboard.limits.budgets import BudgetStore, MemoryBudgets, month_of, to_nano
from switchboard.limits.local import Compiled, LocalGate
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.limits")


# What an admitted request holds until its usage event is recorded: one lease in each of its
# plan's lease scopes, ``tokens`` in each of its token rules and ``amount`` nano-dollars of
# ``month`` (empty without budgets) in each budgeted scope. A tuple: one is made per request.
Held = tuple[Plan, int, int, str]

DemandOf = Callable[[Any], Demand]  # the most tokens a request may use, from its body
PriceOf = Callable[[Caller, str], WorstPrice]  # the dearest price a caller may pay for a model


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
        fast_path: bool = True,
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
        # Both stores in process: admissions that fit are decided in one call (limits.local).
        self._memory: MemoryLimiter | None = None
        self._gate: LocalGate | None = None
        if (
            fast_path
            and isinstance(limiter, MemoryLimiter)
            and (budgets is None or isinstance(budgets, MemoryBudgets))
        ):
            self._memory = limiter
            self._gate = LocalGate(limiter, budgets, lease_seconds)
        self._scopes = Scopes()
        self._lease_seconds = lease_seconds
        self._settle_every = settle_every
        self._owed_tokens: dict[Plan, int] = {}  # real minus reserved tokens, per plan
        self._owed_budgets: dict[tuple[Plan, str], int] = {}  # and nano-dollars, per month
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    def admit_at_once(
        self,
        caller: Caller,
        event: UsageEvent,
        demand_of: DemandOf,
        request: Any,
        price_of: PriceOf,
    ) -> bool:
        """Admit the request here and now when that takes no waiting: nothing limits it, or
        the in-process stores take it whole (`limits.local`). False: ``await
        admit_in_general(...)``, which decides in general and raises on a refusal."""
        plan = self._scopes.plan(caller, event.user_id)
        if plan is None:
            return True
        memory = self._memory
        if memory is None:
            return False
        tokens, amount, month = self._reservation(plan, caller, event, demand_of, request, price_of)
        compiled = plan.compiled
        if not isinstance(compiled, Compiled) or compiled.generation != memory.generation:
            compiled = plan.compiled = self._compile(plan)
        taken = self._gate.try_admit(compiled, tokens, amount, month)  # type: ignore[union-attr]
        if taken is None:
            return False
        event.response_headers = taken
        event.admission = (plan, tokens, amount, month)
        return True

    async def admit(
        self,
        caller: Caller,
        event: UsageEvent,
        demand_of: DemandOf,
        request: Any,
        price_of: PriceOf,
    ) -> None:
        """``demand_of(request)`` and ``price_of(caller, event.model)`` are only called when a
        token rule or a budget needs them (passed apart, so that no closure is made per
        request). Raises `RateLimited` or `BudgetExceeded`, having given back what it took."""
        if not self.admit_at_once(caller, event, demand_of, request, price_of):
            await self.admit_in_general(caller, event, demand_of, request, price_of)

    async def admit_in_general(
        self,
        caller: Caller,
        event: UsageEvent,
        demand_of: DemandOf,
        request: Any,
        price_of: PriceOf,
    ) -> None:
        """`admit` without the fast path: for when `admit_at_once` said False."""
        plan = self._scopes.plan(caller, event.user_id)
        if plan is not None:
            held = self._reservation(plan, caller, event, demand_of, request, price_of)
            await self._admit(plan, event, *held)

    def _reservation(  # noqa: PLR0917 -- the request's parts, passed apart: see `admit`
        self,
        plan: Plan,
        caller: Caller,
        event: UsageEvent,
        demand_of: DemandOf,
        request: Any,
        price_of: PriceOf,
    ) -> tuple[int, int, str]:
        """(tokens against each token rule, nano-dollars against each budget, and its month)."""
        tokens = amount = 0
        month = ""
        budgets = self.budgets
        budgeted = plan.budgeted and budgets is not None
        if plan.token_rules or budgeted:
            prompt, cap = demand_of(request)
            if plan.token_rules:
                tokens = prompt + (cap or 0)
            if budgeted:
                assert budgets is not None
                # The worst case: the prompt estimate at the dearest input price, max_tokens
                # (or the default) at the dearest output price.
                price = price_of(caller, event.model)
                if cap is None:
                    cap = budgets.default_max_tokens
                worst = (prompt * price.input_per_1m + cap * price.output_per_1m) / 1e6
                amount = to_nano(worst)
                month = month_of(event.created_at)
        return tokens, amount, month

    def _compile(self, plan: Plan) -> Compiled:
        assert self._gate is not None
        return self._gate.compile(
            [*((scope, rule) for scope, rule, _ in plan.request_checks), *plan.token_rules],
            plan.leases,
            [(s.scope, s.limits.budget_nano) for s in plan.budgeted],
        )

    async def _admit(
        self, plan: Plan, event: UsageEvent, tokens: int, amount: int, month: str
    ) -> None:
        """The general path: any backend, and every refusal with its reasons."""
        checks = _checks(plan, tokens)
        if checks:
            decision = await self.limiter.admit(checks, distinct=True)
            event.response_headers = headers(decision)
            if not decision.allowed:
                error = rate_limited(decision)
                error.headers = event.response_headers
                raise error
        leased: list[Scope] = []
        try:
            await self._lease(plan, leased)
            if plan.budgeted and self.budgets is not None:
                await self.budgets.reserve(plan.budgeted, amount, month, plan.webhook_url)
        except RateLimited:
            for scope in leased:
                await self.limiter.release(scope)
            for scope, rule, cost in checks:
                await self.limiter.settle(scope, rule, -cost)
            raise
        event.admission = (plan, tokens, amount, month)

    async def _lease(self, plan: Plan, leased: list[Scope]) -> None:
        for scope, most in plan.leases:
            if not await self.limiter.acquire(scope, most, self._lease_seconds):
                raise RateLimited(
                    f"Concurrency limit reached for {scope}: at most {most} requests "
                    "at once; retry when one finishes",
                    retry_after=1,
                    code="concurrency_limit_exceeded",
                )
            leased.append(scope)

    def settle(self, event: UsageEvent) -> None:
        """Release the request's leases and correct its reservations to what it really used
        and cost. Corrections are summed per plan (and month) and applied every
        ``settle_every`` seconds, off the hot path."""
        held = event.admission
        if held is None:
            return
        event.admission = None
        plan, tokens, amount, month = held
        if plan.lease_scopes:
            compiled = plan.compiled
            gate = self._gate
            if gate is None or not isinstance(compiled, Compiled) or not gate.release(compiled):
                self.limiter.release_soon(plan.lease_scopes)
        skipped = event.cached or event.refusal_reason is not None
        if plan.token_rules:
            used = 0 if skipped else event.tokens_input + event.tokens_output
            if used != tokens:
                owed = self._owed_tokens
                owed[plan] = owed.get(plan, 0) + used - tokens
        if month:
            cost = 0 if skipped else to_nano(event.cost_usd)
            if cost != amount:
                key = (plan, month)
                owed_budgets = self._owed_budgets
                owed_budgets[key] = owed_budgets.get(key, 0) + cost - amount
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

    async def _flush(self, tokens: dict[Plan, int], budgets: dict[tuple[Plan, str], int]) -> None:
        """Apply what the plans owe, summed per bucket and per budget counter (plans of
        several keys or users share their tenant's)."""
        per_rule: dict[tuple[Scope, Rule], int] = {}
        for plan, delta in tokens.items():
            for key in plan.token_rules:
                per_rule[key] = per_rule.get(key, 0) + delta
        for (scope, rule), delta in per_rule.items():
            if delta:
                try:
                    await self.limiter.settle(scope, rule, delta)
                except Exception as exc:  # a settlement is best effort; the next one goes on
                    log.warning("settling %s tokens for %s failed: %s", delta, scope, exc)
        per_counter: dict[tuple[Scope, str], tuple[int, Plan, Subject]] = {}
        for (plan, month), delta in budgets.items():
            for subject in plan.budgeted:
                counter = (subject.scope, month)
                found = per_counter.get(counter)
                per_counter[counter] = (delta + (found[0] if found else 0), plan, subject)
        for (scope, month), (delta, plan, subject) in per_counter.items():
            try:
                assert self.budgets is not None
                await self.budgets.settle(
                    subject, month, delta, plan.alert_percent, plan.webhook_url
                )
            except Exception as exc:
                log.warning("settling the budget of %s failed: %s", scope, exc)

    async def aclose(self) -> None:
        if self._owed_tokens or self._owed_budgets:
            self._start_flush()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.limiter.aclose()


def _checks(plan: Plan, tokens: int) -> list[Check] | tuple[Check, ...]:
    """The plan's rate checks: 1 against every requests rule, ``tokens`` against every
    token rule."""
    if not plan.token_rules:
        return plan.request_checks
    return [*plan.request_checks, *((scope, rule, tokens) for scope, rule in plan.token_rules)]

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

The worst-case cost is the prompt estimate plus ``max_tokens`` (``default_max_tokens`` when the
request sets none) at the dearest price among the model's deployments and fallbacks. A request
the remaining budget cannot cover is refused, so concurrent and streamed requests together never
spend past the limit as long as the upstream respects ``max_tokens``. Refusals and cache hits
settle at zero upstream cost.

Budget alerts: when the settled spend of a scope crosses ``budget_alert_percent`` of its budget,
and when a request is first refused for budget in a month, one `BudgetAlert` goes to the
notifier (a log line, and a webhook when configured), once per scope and month on any replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from switchboard.auth.keys import Caller
from switchboard.errors import BudgetExceeded, RateLimited
from switchboard.limits import (
    Check,
    Limiter,
    Rule,
    Scope,
    headers,
    key_scope,
    rate_limited,
    tenant_scope,
    user_scope,
)
from switchboard.limits.budgets import (
    NANO,
    BudgetCheck,
    BudgetDecision,
    BudgetStore,
    month_of,
    to_nano,
)
from switchboard.metering.usage import UsageEvent
from switchboard.policy.limit_set import LimitSet
from switchboard.store.spend import month_bounds

log = logging.getLogger("switchboard.limits")

_SEED_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Demand:
    """The most tokens a request may use: its prompt estimate and its completion cap."""

    prompt: int
    completion_cap: int | None  # max_tokens as asked; None when the request sets none

    @property
    def tokens(self) -> int:
        return self.prompt + (self.completion_cap or 0)


@dataclass(frozen=True, slots=True)
class WorstPrice:
    """The dearest USD per 1M input and output tokens the request could be served at."""

    input_per_1m: float
    output_per_1m: float


@dataclass(frozen=True, slots=True)
class Subject:
    """One scope a request is limited in, and whom it names in the usage ledger."""

    scope: Scope
    limits: LimitSet
    tenant_id: str
    key_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    kind: str  # "threshold" (settled spend crossed the alert percent) | "exceeded"
    tenant_id: str
    scope: Scope
    month: str
    spent_usd: float
    budget_usd: float
    percent: float
    webhook_url: str | None


@dataclass(frozen=True, slots=True)
class _BudgetHold:
    subject: Subject
    month: str
    amount: int  # nano-dollars reserved
    alert_percent: float
    webhook_url: str | None


@dataclass(slots=True)
class Held:
    """What an admitted request holds until its usage event is recorded."""

    checks: list[Check] = field(default_factory=list)
    tokens: list[tuple[Scope, Rule, int]] = field(default_factory=list)
    leases: list[Scope] = field(default_factory=list)
    budgets: list[_BudgetHold] = field(default_factory=list)


SpendReader = Callable[[Subject, str], Awaitable[float]]  # (subject, month) -> USD spent
Notifier = Callable[[BudgetAlert], Awaitable[None]]


def subjects(caller: Caller, user: str | None) -> list[Subject]:
    """The scopes with limits of their own for this request (often none: the fast path)."""
    tenant = caller.tenant.id
    config = caller.config
    out = []
    if not config.limits.is_empty:
        out.append(Subject(tenant_scope(tenant), config.limits, tenant))
    if not caller.policy.is_empty:
        out.append(Subject(key_scope(caller.key.id), caller.policy, tenant, key_id=caller.key.id))
    per_user = config.per_user
    user = caller.key.user_id or user  # a key's owner is proven; a named user is declared
    if user and per_user is not None and not per_user.is_empty:
        out.append(Subject(user_scope(tenant, user), per_user, tenant, user_id=user))
    return out


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
        self.budgets = budgets
        self._spend = spend
        self._notify = notify
        self._lease_seconds = lease_seconds
        self._default_max_tokens = default_max_tokens
        self._settle_every = settle_every
        self._owed_tokens: dict[tuple[Scope, Rule], int] = {}
        self._owed_budgets: dict[tuple[Scope, str], tuple[int, _BudgetHold]] = {}
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
        found = subjects(caller, event.user_id)
        if not found:
            return
        held = Held()
        wanted: Demand | None = None
        for subject in found:
            held.checks += [(subject.scope, rule, 1) for rule in subject.limits.request_rules]
            rule = subject.limits.token_rule
            if rule is not None:
                wanted = wanted or demand()
                held.checks.append((subject.scope, rule, wanted.tokens))
                held.tokens.append((subject.scope, rule, wanted.tokens))
        if held.checks:
            decision = await self.limiter.admit(held.checks)
            event.response_headers = headers(decision)
            if not decision.allowed:
                error = rate_limited(decision)
                error.headers = event.response_headers
                raise error
        try:
            await self._lease(found, held)
            budgeted = [s for s in found if s.limits.monthly_budget_usd is not None]
            if budgeted and self.budgets is not None:
                wanted = wanted or demand()
                await self._reserve(
                    caller, event, budgeted, wanted=wanted, price=worst_price(), held=held
                )
        except RateLimited:
            await self._give_back(held)
            raise
        event.admission = held

    async def _lease(self, found: list[Subject], held: Held) -> None:
        for subject in found:
            most = subject.limits.max_concurrent_requests
            if most is None:
                continue
            if not await self.limiter.acquire(subject.scope, most, self._lease_seconds):
                raise RateLimited(
                    f"Concurrency limit reached for {subject.scope}: at most {most} requests "
                    "at once; retry when one finishes",
                    retry_after=1,
                    code="concurrency_limit_exceeded",
                )
            held.leases.append(subject.scope)

    async def _reserve(
        self,
        caller: Caller,
        event: UsageEvent,
        budgeted: list[Subject],
        *,
        wanted: Demand,
        price: WorstPrice,
        held: Held,
    ) -> None:
        assert self.budgets is not None
        cap = wanted.completion_cap
        if cap is None:
            cap = self._default_max_tokens
        worst = (wanted.prompt * price.input_per_1m + cap * price.output_per_1m) / 1_000_000
        amount = to_nano(worst)
        month = month_of(event.created_at)
        checks = [
            BudgetCheck(s.scope, month, to_nano(s.limits.monthly_budget_usd or 0.0), amount)
            for s in budgeted
        ]
        decision = await self._reserve_seeded(budgeted, checks)
        config = caller.config
        webhook = str(config.budget_webhook_url) if config.budget_webhook_url else None
        if not decision.allowed:
            await self._refused(budgeted, checks, decision, worst, webhook)
        held.budgets = [
            _BudgetHold(s, month, amount, config.budget_alert_percent, webhook) for s in budgeted
        ]

    async def _reserve_seeded(
        self, budgeted: list[Subject], checks: list[BudgetCheck]
    ) -> BudgetDecision:
        """Reserve; seed the counters the store does not hold yet from the ledger, and retry."""
        assert self.budgets is not None
        decision = await self.budgets.reserve(checks)
        for _ in range(_SEED_ROUNDS):
            if not decision.missing:
                return decision
            for i in decision.missing:
                spent = await self._spend(budgeted[i], checks[i].month) if self._spend else 0.0
                await self.budgets.seed(checks[i].scope, checks[i].month, to_nano(spent))
            decision = await self.budgets.reserve(checks)
        raise RuntimeError("budget counters vanished while being seeded")  # pragma: no cover

    async def _refused(
        self,
        budgeted: list[Subject],
        checks: list[BudgetCheck],
        decision: BudgetDecision,
        worst: float,
        webhook: str | None,
    ) -> None:
        assert self.budgets is not None
        i = next(
            (
                i
                for i, (c, spent) in enumerate(zip(checks, decision.spent, strict=True))
                if spent + c.amount > c.limit
            ),
            0,
        )
        check, subject = checks[i], budgeted[i]
        spent = decision.spent[i] / NANO if decision.spent else 0.0
        budget = check.limit / NANO
        if await self.budgets.mark(check.scope, check.month, "exceeded"):
            await self._alert(
                BudgetAlert(
                    "exceeded",
                    subject.tenant_id,
                    check.scope,
                    check.month,
                    spent,
                    budget,
                    100.0,
                    webhook,
                )
            )
        _, end = month_bounds(check.month)
        raise BudgetExceeded(
            f"Monthly budget exceeded for {check.scope}: ${spent:.4f} of ${budget:.2f} spent or "
            f"reserved in {check.month}, and this request may cost up to ${worst:.4f}",
            retry_after=max(1.0, (end - datetime.now(UTC)).total_seconds()),
        )

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
            self._spawn(self._release(held.leases))
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

    async def _release(self, leases: list[Scope]) -> None:
        for scope in leases:
            try:
                await self.limiter.release(scope)
            except Exception as exc:  # the lease then expires on its own
                log.warning("releasing a concurrency slot of %s failed: %s", scope, exc)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        tokens, self._owed_tokens = self._owed_tokens, {}
        budgets, self._owed_budgets = self._owed_budgets, {}
        self._spawn(self._flush(tokens, budgets))

    async def _flush(
        self,
        tokens: dict[tuple[Scope, Rule], int],
        budgets: dict[tuple[Scope, str], tuple[int, _BudgetHold]],
    ) -> None:
        for (scope, rule), delta in tokens.items():
            if delta:
                try:
                    await self.limiter.settle(scope, rule, delta)
                except Exception as exc:  # a settlement is best effort; the next one goes on
                    log.warning("settling %s tokens for %s failed: %s", delta, scope, exc)
        for (scope, month), (delta, hold) in budgets.items():
            try:
                await self._settle_budget(scope, month, delta, hold)
            except Exception as exc:
                log.warning("settling the budget of %s failed: %s", scope, exc)

    async def _settle_budget(self, scope: Scope, month: str, delta: int, hold: _BudgetHold) -> None:
        assert self.budgets is not None
        total = await self.budgets.settle(scope, month, delta) if delta else None
        limit = hold.subject.limits.monthly_budget_usd
        if total is None or not limit:
            return
        spent = total / NANO
        if spent * 100 < limit * hold.alert_percent:
            return
        if await self.budgets.mark(scope, month, f"threshold-{hold.alert_percent:g}"):
            alert = BudgetAlert(
                "threshold",
                hold.subject.tenant_id,
                scope,
                month,
                spent,
                limit,
                hold.alert_percent,
                hold.webhook_url,
            )
            await self._alert(alert)

    async def _alert(self, alert: BudgetAlert) -> None:
        log.warning(
            "budget %s for %s in %s: $%.4f of $%.2f (alert at %g%%)",
            alert.kind,
            alert.scope,
            alert.month,
            alert.spent_usd,
            alert.budget_usd,
            alert.percent,
        )
        if self._notify is not None:
            self._spawn(self._notify(alert))

    async def aclose(self) -> None:
        if self._owed_tokens or self._owed_budgets:
            self._start_flush()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.limiter.aclose()

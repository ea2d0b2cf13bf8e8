"""Monthly budgets on the request path: reserve a request's worst-case cost in every scope
with a budget before it runs, settle the real cost after, and alert once per scope and month.

    reserve ─▶ worst case (`RequestLimits` works it out) = prompt estimate * dearest input
               price + max_tokens (or the default) * dearest output price ─▶ the store
               reserves it in every scope, or refuses (BudgetExceeded, 429
               insufficient_quota) ─▶ counters the store lacks are seeded from the ledger first
    settle  ─▶ the store adds real - reserved ─▶ past ``budget_alert_percent``? alert once

The store (`limits.budgets`) is in process or in Redis; `RequestLimits` calls this module and
batches the settlements.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from switchboard.errors import BudgetExceeded
from switchboard.gateway.scopes import Subject
from switchboard.limits import Scope
from switchboard.limits.budgets import (
    NANO,
    BudgetCheck,
    BudgetDecision,
    BudgetStore,
    to_nano,
)
from switchboard.store.spend import month_bounds

log = logging.getLogger("switchboard.limits")

_SEED_ROUNDS = 3


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class WorstPrice:
    """The dearest USD per 1M input and output tokens the request could be served at."""

    input_per_1m: float
    output_per_1m: float


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class BudgetAlert:
    kind: str  # "threshold" (settled spend crossed the alert percent) | "exceeded"
    tenant_id: str
    scope: Scope
    month: str
    spent_usd: float
    budget_usd: float
    percent: float
    webhook_url: str | None


SpendReader = Callable[[Subject, str], Awaitable[float]]  # (subject, month) -> USD spent
Notifier = Callable[[BudgetAlert], Awaitable[None]]
Spawn = Callable[[Awaitable[None]], None]


class BudgetKeeper:
    def __init__(
        self,
        store: BudgetStore,
        *,
        spend: SpendReader | None,
        notify: Notifier | None,
        default_max_tokens: int,
        spawn: Spawn,
    ) -> None:
        self.store = store
        self._spend = spend
        self._notify = notify
        self.default_max_tokens = default_max_tokens  # the reservation's cap without max_tokens
        self._spawn = spawn

    async def reserve(
        self, budgeted: Sequence[Subject], amount: int, month: str, webhook: str | None
    ) -> None:
        """Reserve ``amount`` in every budgeted scope, or raise `BudgetExceeded`."""
        checks = [BudgetCheck(s.scope, month, s.limits.budget_nano, amount) for s in budgeted]
        decision = await self.store.reserve(checks)
        if decision.missing:
            decision = await self._reserve_seeded(budgeted, checks, decision)
        if not decision.allowed:
            await self._refused(budgeted, checks, decision, amount / NANO, webhook)

    async def _reserve_seeded(
        self, budgeted: Sequence[Subject], checks: list[BudgetCheck], decision: BudgetDecision
    ) -> BudgetDecision:
        """Seed the counters the store does not hold yet from the ledger, and reserve again."""
        for _ in range(_SEED_ROUNDS):
            if not decision.missing:
                return decision
            for i in decision.missing:
                spent = await self._spend(budgeted[i], checks[i].month) if self._spend else 0.0
                await self.store.seed(checks[i].scope, checks[i].month, to_nano(spent))
            decision = await self.store.reserve(checks)
        raise RuntimeError("budget counters vanished while being seeded")  # pragma: no cover

    async def _refused(
        self,
        budgeted: Sequence[Subject],
        checks: list[BudgetCheck],
        decision: BudgetDecision,
        worst: float,
        webhook: str | None,
    ) -> None:
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
        if await self.store.mark(check.scope, check.month, "exceeded"):
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

    async def settle(
        self, subject: Subject, month: str, delta: int, alert_percent: float, webhook: str | None
    ) -> None:
        """Add ``delta`` (real minus reserved) and alert when the threshold is first passed."""
        scope = subject.scope
        total = await self.store.settle(scope, month, delta) if delta else None
        limit = subject.limits.monthly_budget_usd
        if total is None or not limit:
            return
        spent = total / NANO
        if spent * 100 < limit * alert_percent:
            return
        if await self.store.mark(scope, month, f"threshold-{alert_percent:g}"):
            alert = BudgetAlert(
                "threshold", subject.tenant_id, scope, month, spent, limit, alert_percent, webhook
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

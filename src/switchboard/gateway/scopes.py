"""Who and what a request is limited by: its scopes (tenant, key, end user) with their limits,
and the most tokens it may use. Shared by the rate, concurrency and budget steps.

`Scopes.plan` gives a request's `Plan`: its subjects and, worked out once per cached caller
(not per request), the rate checks, token rules, leases and budgets they add up to. Plans are
cached per (tenant, key) and per (tenant, key, end user), and replaced when an admin's edit
replaces the tenant config or the key policy they were built from."""

from __future__ import annotations

from dataclasses import dataclass, field

from switchboard.auth.keys import Caller
from switchboard.limits import Check, Rule, Scope, key_scope, tenant_scope, user_scope
from switchboard.policy.limit_set import LimitSet

# The most tokens a request may use: (its prompt estimate, its completion cap), the cap as the
# request asked (max_tokens), None when it sets none. A plain tuple: one is made per request.
Demand = tuple[int, int | None]


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class Subject:
    """One scope a request is limited in, and whom it names in the usage ledger."""

    scope: Scope
    limits: LimitSet
    tenant_id: str
    key_id: str | None = None
    user_id: str | None = None


@dataclass(slots=True, eq=False)
class Plan:
    """What admitting a request takes, by scope. Every (scope, rule) appears once. Built once
    per cached caller and shared by its requests; ``compiled`` is the limits step's own form of
    it (see `limits.local`), made on first use."""

    subjects: tuple[Subject, ...]
    request_checks: tuple[Check, ...]  # (scope, rule, 1) for every requests rule
    token_rules: tuple[tuple[Scope, Rule], ...]
    leases: tuple[tuple[Scope, int], ...]  # (scope, max_concurrent_requests)
    budgeted: tuple[Subject, ...]
    alert_percent: float  # the tenant's budget alert threshold, in percent
    webhook_url: str | None  # where the tenant's budget alerts go, besides the log
    lease_scopes: tuple[Scope, ...] = field(init=False)
    compiled: object = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.lease_scopes = tuple(scope for scope, _ in self.leases)

    @classmethod
    def of(
        cls, subjects: tuple[Subject, ...], alert_percent: float, webhook_url: str | None
    ) -> Plan | None:
        if not subjects:
            return None
        return cls(
            subjects,
            tuple((s.scope, rule, 1) for s in subjects for rule in s.limits.request_rules),
            tuple((s.scope, s.limits.token_rule) for s in subjects if s.limits.token_rule),
            tuple(
                (s.scope, s.limits.max_concurrent_requests)
                for s in subjects
                if s.limits.max_concurrent_requests is not None
            ),
            tuple(s for s in subjects if s.limits.monthly_budget_usd is not None),
            alert_percent,
            webhook_url,
        )


class Scopes:
    """Which scopes with limits of their own a request has (often none: the fast path). The
    tenant's and the key's subjects are worked out once per cached caller and kept on it
    (``Caller.limits_memo``): an admin's edit reaches requests as a new caller object, with the
    new config or policy, when the key cache refills. Plans with an end user are cached per
    (tenant, key, user) and checked against the config and policy they were built from."""

    def __init__(self, max_users: int = 10_000) -> None:
        self._max_users = max_users
        self._users: dict[tuple[str, str, str], tuple[object, object, Plan | None]] = {}

    def plan(self, caller: Caller, user: str | None) -> Plan | None:
        """None when nothing limits the request (the fast path)."""
        memo = caller.limits_memo
        if not isinstance(memo, _Memo) or memo.scopes is not self:
            memo = _Memo(self, self._plan(caller, self._fixed_subjects(caller)), caller)
            object.__setattr__(caller, "limits_memo", memo)  # see Caller.limits_memo
        if memo.per_user is None:
            return memo.fixed
        user = caller.key.user_id or user  # a key's owner is proven; a named user is declared
        if not user:
            return memo.fixed
        key = (caller.tenant.id, caller.key.id, user)
        found = self._users.get(key)
        if found is not None and found[0] is caller.config and found[1] is caller.policy:
            return found[2]
        tenant = caller.tenant.id
        mine = Subject(user_scope(tenant, user), memo.per_user, tenant, user_id=user)
        fixed = memo.fixed
        plan = self._plan(caller, (*fixed.subjects, mine) if fixed is not None else (mine,))
        if len(self._users) >= self._max_users:
            self._users.clear()
        self._users[key] = (caller.config, caller.policy, plan)
        return plan

    @staticmethod
    def _fixed_subjects(caller: Caller) -> tuple[Subject, ...]:
        tenant = caller.tenant.id
        built = []
        if not caller.config.limits.is_empty:
            built.append(Subject(tenant_scope(tenant), caller.config.limits, tenant))
        if not caller.policy.is_empty:
            built.append(
                Subject(key_scope(caller.key.id), caller.policy, tenant, key_id=caller.key.id)
            )
        return tuple(built)

    @staticmethod
    def _plan(caller: Caller, subjects: tuple[Subject, ...]) -> Plan | None:
        config = caller.config
        webhook = str(config.budget_webhook_url) if config.budget_webhook_url else None
        return Plan.of(subjects, config.budget_alert_percent, webhook)


class _Memo:
    """One caller's plan without an end user, and the per-user limits, if any, that a request
    naming one adds. Belongs to one `Scopes` (tests run several side by side)."""

    __slots__ = ("fixed", "per_user", "scopes")

    def __init__(self, scopes: Scopes, fixed: Plan | None, caller: Caller) -> None:
        self.scopes = scopes
        self.fixed = fixed
        per_user = caller.config.per_user
        self.per_user = None if per_user is None or per_user.is_empty else per_user

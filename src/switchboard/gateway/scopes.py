"""Who and what a request is limited by: its scopes (tenant, key, end user) with their limits,
and the most tokens it may use. Shared by the rate, concurrency and budget steps.

`Scopes.plan` gives a request's `Plan`: its subjects and, worked out once per cached caller
(not per request), the rate checks, token rules, leases and budgets they add up to."""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.auth.keys import Caller
from switchboard.limits import Check, Rule, Scope, key_scope, tenant_scope, user_scope
from switchboard.policy.limit_set import LimitSet


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class Demand:
    """The most tokens a request may use: its prompt estimate and its completion cap."""

    prompt: int
    completion_cap: int | None  # max_tokens as asked; None when the request sets none

    @property
    def tokens(self) -> int:
        return self.prompt + (self.completion_cap or 0)


@dataclass(slots=True)  # made per request: plain init is faster than frozen
class Subject:
    """One scope a request is limited in, and whom it names in the usage ledger."""

    scope: Scope
    limits: LimitSet
    tenant_id: str
    key_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What admitting a request takes, by scope. Every (scope, rule) appears once."""

    subjects: tuple[Subject, ...]
    request_checks: tuple[Check, ...]  # (scope, rule, 1) for every requests rule
    token_rules: tuple[tuple[Scope, Rule], ...]
    leases: tuple[tuple[Scope, int], ...]  # (scope, max_concurrent_requests)
    budgeted: tuple[Subject, ...]

    @classmethod
    def of(cls, subjects: tuple[Subject, ...]) -> Plan | None:
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
        )


class Scopes:
    """Which scopes with limits of their own a request has (often none: the fast path). The
    tenant's and the key's subjects are built once per cached caller: an admin's edit replaces
    the config or policy object, which is how a stale entry is recognised."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._fixed: dict[tuple[str, str], tuple[object, object, Plan | None]] = {}

    def plan(self, caller: Caller, user: str | None) -> Plan | None:
        """None when nothing limits the request (the fast path)."""
        fixed = self._fixed_plan(caller)
        per_user = caller.config.per_user
        user = caller.key.user_id or user  # a key's owner is proven; a named user is declared
        if user and per_user is not None and not per_user.is_empty:
            tenant = caller.tenant.id
            mine = Subject(user_scope(tenant, user), per_user, tenant, user_id=user)
            return Plan.of((*fixed.subjects, mine) if fixed is not None else (mine,))
        return fixed

    def _fixed_plan(self, caller: Caller) -> Plan | None:
        key = (caller.tenant.id, caller.key.id)
        found = self._fixed.get(key)
        if found is not None and found[0] is caller.config and found[1] is caller.policy:
            return found[2]
        tenant = caller.tenant.id
        built = []
        if not caller.config.limits.is_empty:
            built.append(Subject(tenant_scope(tenant), caller.config.limits, tenant))
        if not caller.policy.is_empty:
            built.append(
                Subject(key_scope(caller.key.id), caller.policy, tenant, key_id=caller.key.id)
            )
        if len(self._fixed) >= self._max:
            self._fixed.clear()
        plan = Plan.of(tuple(built))
        self._fixed[key] = (caller.config, caller.policy, plan)
        return plan

"""Who and what a request is limited by: its scopes (tenant, key, end user) with their limits,
and the most tokens it may use. Shared by the rate, concurrency and budget steps."""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.auth.keys import Caller
from switchboard.limits import Scope, key_scope, tenant_scope, user_scope
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

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
    out = list(_fixed_subjects(caller))
    per_user = caller.config.per_user
    user = caller.key.user_id or user  # a key's owner is proven; a named user is declared
    if user and per_user is not None and not per_user.is_empty:
        tenant = caller.tenant.id
        out.append(Subject(user_scope(tenant, user), per_user, tenant, user_id=user))
    return out


_FIXED: dict[tuple[str, str], tuple[object, object, tuple[Subject, ...]]] = {}
_FIXED_MAX = 100_000


def _fixed_subjects(caller: Caller) -> tuple[Subject, ...]:
    """The tenant's and the key's subjects, built once per cached caller (its config and
    policy objects are replaced, not changed, when an admin edits them)."""
    key = (caller.tenant.id, caller.key.id)
    found = _FIXED.get(key)
    if found is not None and found[0] is caller.config and found[1] is caller.policy:
        return found[2]
    tenant = caller.tenant.id
    built = []
    if not caller.config.limits.is_empty:
        built.append(Subject(tenant_scope(tenant), caller.config.limits, tenant))
    if not caller.policy.is_empty:
        built.append(Subject(key_scope(caller.key.id), caller.policy, tenant, key_id=caller.key.id))
    if len(_FIXED) >= _FIXED_MAX:
        _FIXED.clear()
    _FIXED[key] = (caller.config, caller.policy, tuple(built))
    return _FIXED[key][2]

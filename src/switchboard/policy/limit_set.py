"""The limits one scope carries: a tenant, an API key, or each end user of a tenant.

    rate_limit_per_minute / rate_limit_per_hour   requests
    tokens_per_minute                              prompt + completion tokens (reserved up front)
    max_concurrent_requests                        requests in flight at once (streams included)
    monthly_budget_usd                             spend per calendar month (UTC), hard limit

The same shape serves three places: a tenant's config (its flat fields, as the founding
documents wrote them), a key's policy, and ``per_user`` in the tenant config (every end user of
the tenant gets their own buckets with these numbers).
"""

from __future__ import annotations

from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from switchboard.limits.base import Rule


class LimitSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    rate_limit_per_hour: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    monthly_budget_usd: float | None = Field(default=None, ge=0)

    @cached_property
    def request_rules(self) -> tuple[Rule, ...]:
        return request_rules(self.rate_limit_per_minute, self.rate_limit_per_hour)

    @cached_property
    def token_rule(self) -> Rule | None:
        return Rule("tokens", self.tokens_per_minute, 60) if self.tokens_per_minute else None

    @cached_property
    def budget_nano(self) -> int:
        """The monthly budget in nano-dollars (what the budget counters count in)."""
        return round((self.monthly_budget_usd or 0.0) * 1_000_000_000)

    @cached_property
    def is_empty(self) -> bool:
        return not (
            self.request_rules
            or self.token_rule
            or self.max_concurrent_requests
            or self.monthly_budget_usd is not None
        )


class KeyPolicy(LimitSet):
    """What one API key may do, on top of its tenant's policy (both must allow a request)."""

    allowed_models: list[str] | None = Field(
        default=None, description="Model names this key may use; None means all its tenant may."
    )


def request_rules(per_minute: int | None, per_hour: int | None) -> tuple[Rule, ...]:
    rules = []
    if per_minute:
        rules.append(Rule("requests", per_minute, 60))
    if per_hour:
        rules.append(Rule("requests", per_hour, 3600))
    return tuple(rules)


NO_LIMITS = LimitSet()
NO_KEY_POLICY = KeyPolicy()

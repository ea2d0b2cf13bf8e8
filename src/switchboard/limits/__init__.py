"""Tenant governance: request, token and concurrency limits per tenant, key and user.

One `Limiter` call per request before the upstream (`admit`, plus `acquire` for concurrency),
one after it (`settle` with the real token count, `release`). `MemoryLimiter` serves a single
worker; `RedisLimiter` holds limits across workers and replicas. See `base` for the algorithm.
"""

from switchboard.limits.base import (
    Check,
    Decision,
    Limiter,
    LimiterUnavailable,
    Rule,
    RuleName,
    RuleState,
    Scope,
    format_duration,
    headers,
    key_scope,
    rate_limited,
    retry_after,
    tenant_scope,
    user_scope,
)
from switchboard.limits.memory import MemoryLimiter
from switchboard.limits.redis import RedisLimiter

__all__ = [
    "Check",
    "Decision",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RedisLimiter",
    "Rule",
    "RuleName",
    "RuleState",
    "Scope",
    "format_duration",
    "headers",
    "key_scope",
    "rate_limited",
    "retry_after",
    "tenant_scope",
    "user_scope",
]

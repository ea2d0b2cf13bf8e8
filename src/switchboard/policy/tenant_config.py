"""A tenant's policy document, in the shape the founding documents used:

    {"tenant_id": "t1", "blocked_tools": ["mcp_finance"],
     "sensitive_prompt_patterns": ["password", "credit card"],
     "refusal_rules": [{"type": "contains", "pattern": "hack", "reason": "Security violation"}],
     "rate_limit_per_minute": 60, "rate_limit_per_hour": 1000,
     "allowed_routes": ["PRICE_COMPARE", "DIET_NUTRITION"]}

plus allowed models, PII actions and the response cache. Validated with pydantic at the admin
API; the gateway reads it as a `GuardrailPolicy` and the other typed views below. Fields the
gateway does not enforce yet are stored and returned, and the docs say which.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from switchboard.limits.base import Rule
from switchboard.policy import pii
from switchboard.policy.guardrails import GuardrailPolicy, RefusalRule
from switchboard.policy.intents import IntentClassifier, route_from, shipped_routes
from switchboard.policy.limit_set import LimitSet


class RefusalRuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["contains", "regex"]
    pattern: str = Field(min_length=1, max_length=500)
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class RouteDefinition(BaseModel):
    """An intent a tenant can allow: keywords ("price*" matches any ending) and examples."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    keywords: list[str] = Field(default_factory=list, max_length=500)
    examples: list[str] = Field(default_factory=list, max_length=200)


class CacheSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    ttl_seconds: float = Field(default=300, gt=0, le=86_400 * 30)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    blocked_tools: list[str] = Field(default_factory=list)
    blocked_tools_action: Literal["remove", "refuse"] = "remove"
    sensitive_prompt_patterns: list[str] = Field(default_factory=list)
    sensitive_reason: str = "The request contains sensitive content."
    refusal_rules: list[RefusalRuleModel] = Field(default_factory=list)
    pii_actions: dict[str, Literal["block", "redact", "log"]] = Field(default_factory=dict)
    pii_on_responses: bool = False
    allowed_models: list[str] | None = Field(
        default=None, description="Model names the tenant may use; None means all its mode allows."
    )
    cache: CacheSettings = Field(default_factory=CacheSettings)
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    rate_limit_per_hour: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    per_user: LimitSet | None = Field(
        default=None, description="Limits each end user of the tenant gets on their own."
    )
    budget_alert_percent: float = Field(default=80, gt=0, le=100)
    budget_webhook_url: HttpUrl | None = None
    allowed_routes: list[str] = Field(
        default_factory=list, description="Intents the tenant allows; empty allows every one."
    )
    route_definitions: dict[str, RouteDefinition] = Field(
        default_factory=dict, description="Routes to add, or shipped ones to replace, by name."
    )
    route_threshold: float = Field(default=1.0, gt=0, le=100)
    route_refusal_reason: str = Field(default="", max_length=500)
    allow_unclassified: bool = False

    @field_validator("pii_actions")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(pii.DETECTORS)
        if unknown:
            kinds = ", ".join(pii.DETECTORS)
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {kinds}")
        return value

    @field_validator("sensitive_prompt_patterns")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"{pattern!r} is not a valid regular expression") from exc
        return value

    @cached_property
    def limits(self) -> LimitSet:
        """The tenant's own limits (its flat fields) as a `LimitSet`, built once per config."""
        return LimitSet(
            rate_limit_per_minute=self.rate_limit_per_minute,
            rate_limit_per_hour=self.rate_limit_per_hour,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent_requests=self.max_concurrent_requests,
            monthly_budget_usd=self.monthly_budget_usd,
        )

    @cached_property
    def request_rules(self) -> tuple[Rule, ...]:
        return self.limits.request_rules

    @cached_property
    def token_rule(self) -> Rule | None:
        return self.limits.token_rule

    @model_validator(mode="after")
    def _routes_known(self) -> TenantConfig:
        known = set(shipped_routes()) | set(self.route_definitions)
        unknown = [r for r in self.allowed_routes if r not in known]
        if unknown:
            raise ValueError(
                f"allowed_routes names routes that are neither shipped nor in "
                f"route_definitions: {unknown}; shipped: {sorted(shipped_routes())}"
            )
        return self

    @cached_property
    def has_guardrails(self) -> bool:
        return bool(
            self.sensitive_prompt_patterns
            or self.refusal_rules
            or self.pii_actions
            or self.blocked_tools
            or self.allowed_routes
        )

    @cached_property
    def intents(self) -> IntentClassifier | None:
        """The classifier over the shipped routes and the tenant's own (built once)."""
        if not self.allowed_routes:
            return None
        routes = dict(shipped_routes())
        for name, spec in self.route_definitions.items():
            routes[name] = route_from(name, spec.model_dump())
        return IntentClassifier(routes.values(), self.route_threshold)

    @cached_property
    def guardrail_policy(self) -> GuardrailPolicy:
        """The guardrails' view of this config (built once per cached config)."""
        return GuardrailPolicy(
            sensitive_prompt_patterns=tuple(self.sensitive_prompt_patterns),
            sensitive_reason=self.sensitive_reason,
            refusal_rules=tuple(
                RefusalRule(r.type, r.pattern, r.reason) for r in self.refusal_rules
            ),
            pii_actions=dict(self.pii_actions),
            pii_on_responses=self.pii_on_responses,
            blocked_tools=tuple(self.blocked_tools),
            blocked_tools_action=self.blocked_tools_action,
            allowed_routes=tuple(self.allowed_routes),
            intents=self.intents,
            route_refusal_reason=self.route_refusal_reason,
            allow_unclassified=self.allow_unclassified,
        )

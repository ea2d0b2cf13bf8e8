"""Tenant policy: guardrails on prompts and responses (PII, sensitive patterns, refusals,
blocked tools), pluggable through one registry."""

from switchboard.policy.guardrails import (
    GuardrailPolicy,
    RefusalRule,
    Verdict,
    guard_prompt,
    register,
)

__all__ = [
    "GuardrailPolicy",
    "RefusalRule",
    "Verdict",
    "guard_prompt",
    "register",
]

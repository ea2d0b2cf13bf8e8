"""Tenant policy: guardrails on prompts and responses (PII, sensitive patterns, refusals,
blocked tools), pluggable through one registry."""

from switchboard.policy.guardrails import (
    GuardrailPolicy,
    RefusalRule,
    StreamRedactor,
    Verdict,
    guard_prompt,
    register,
)

__all__ = [
    "GuardrailPolicy",
    "RefusalRule",
    "StreamRedactor",
    "Verdict",
    "guard_prompt",
    "register",
]

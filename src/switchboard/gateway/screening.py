"""The tenant-policy step of the pipe, before routing: may the tenant use this model, and do
its guardrails let the request through (possibly redacted), or refuse it?

A refusal is not an error: the client gets a normal answer whose text is the configured
reason, ``finish_reason: "content_filter"`` and a ``refusal`` field, metered with
zero upstream tokens and the reason recorded on the usage event.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.auth.keys import Caller
from switchboard.errors import PermissionDenied
from switchboard.gateway.routing import ModelCatalog
from switchboard.policy.guardrails import guard_prompt
from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import completion, new_id


@dataclass(frozen=True, slots=True)
class Screened:
    body: JSON
    refusal: str | None = None


def check_model(caller: Caller, model: str) -> None:
    allowed = caller.config.allowed_models
    if allowed is not None and model not in allowed:
        raise PermissionDenied(
            f"the model {model!r} is not among this tenant's allowed models",
            param="model",
            code="model_not_allowed",
        )


def visible_models(catalog: ModelCatalog, caller: Caller) -> list[str]:
    names = catalog.visible(caller.tenant.usage_mode)
    allowed = caller.config.allowed_models
    return names if allowed is None else [n for n in names if n in allowed]


def screen(caller: Caller, body: JSON) -> Screened:
    check_model(caller, body["model"])
    config = caller.config
    if not config.has_guardrails:
        return Screened(body)
    verdict = guard_prompt(config.guardrail_policy, body)
    return Screened(verdict.body, verdict.refusal)


def refusal_completion(model: str, reason: str) -> JSON:
    return completion(
        id=new_id(),
        model=model,
        message={"role": "assistant", "content": reason, "refusal": reason},
        finish_reason="content_filter",
        usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    )

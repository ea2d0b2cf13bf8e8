"""The tenant-policy step of the pipe, before routing: may the tenant use this model, and do
its guardrails let the request through (possibly redacted), or refuse it?

A refusal is not an error: the client gets a normal answer whose text is the configured
reason, ``finish_reason: "content_filter"`` and a ``refusal`` field, metered with
zero upstream tokens and the reason recorded on the usage event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from switchboard.auth.keys import Caller
from switchboard.errors import PermissionDenied, SwitchboardError
from switchboard.gateway.routing import ModelCatalog
from switchboard.gateway.streams import ClientStream
from switchboard.policy.guardrails import screen_prompt
from switchboard.policy.response_guard import StreamScreen, screen_completion
from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import completion, new_id

log = logging.getLogger("switchboard.guardrails")


def check_model(caller: Caller, model: str) -> None:
    """Both the tenant's and the key's allowed models (when set) must name the model."""
    for allowed, whose in (
        (caller.config.allowed_models, "this tenant's"),
        (caller.policy.allowed_models, "this API key's"),
    ):
        if allowed is not None and model not in allowed:
            raise PermissionDenied(
                f"the model {model!r} is not among {whose} allowed models",
                param="model",
                code="model_not_allowed",
            )


def visible_models(catalog: ModelCatalog, caller: Caller) -> list[str]:
    names = catalog.visible(caller.tenant.usage_mode)
    for allowed in (caller.config.allowed_models, caller.policy.allowed_models):
        if allowed is not None:
            names = [n for n in names if n in allowed]
    return names


def screen(caller: Caller, body: JSON) -> tuple[JSON, str | None]:
    """The guardrails' verdict (after `check_model`, which runs before the limits step): the
    body to send on (a copy, if they changed it) and the refusal reason, if they refused."""
    config = caller.config
    if not config.has_guardrails:
        return body, None
    return screen_prompt(config.guardrail_policy, body)


def refusal_completion(model: str, reason: str) -> JSON:
    return completion(
        id=new_id(),
        model=model,
        message={"role": "assistant", "content": reason, "refusal": reason},
        finish_reason="content_filter",
        usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    )


def screens_answers(caller: Caller) -> bool:
    config = caller.config
    return config.pii_on_responses and bool(config.pii_actions)


def screen_answer(caller: Caller, answer: JSON, request_id: str) -> JSON:
    """The tenant's PII actions applied to a whole answer (in place), when it asks for that."""
    if screens_answers(caller):
        _log_findings(request_id, screen_completion(caller.config.pii_actions, answer))
    return answer


def screen_stream(caller: Caller, stream: ClientStream, request_id: str) -> ClientStream:
    if not screens_answers(caller):
        return stream
    return ScreenedStream(stream, StreamScreen(caller.config.pii_actions), request_id)


class ScreenedStream:
    """A client stream whose text is screened for PII on its way out (see `response_guard`)."""

    def __init__(self, inner: ClientStream, screen: StreamScreen, request_id: str) -> None:
        self._inner = inner
        self._screen = screen
        self._request_id = request_id

    async def __aiter__(self) -> AsyncIterator[list[JSON]]:
        last: JSON | None = None
        async for batch in self._inner:
            if batch:
                last = batch[-1]
            yield self._screen.batch(batch)
        tail = self._screen.tail()
        if tail and last is not None:
            yield [{**{k: v for k, v in last.items() if k != "usage"}, "choices": tail}]

    def client_gone(self) -> None:
        self._inner.client_gone()

    def fail(self, exc: SwitchboardError) -> None:
        self._inner.fail(exc)

    async def aclose(self) -> None:
        _log_findings(self._request_id, self._screen.findings)
        await self._inner.aclose()


def _log_findings(request_id: str, findings: list[str]) -> None:
    if findings:  # kinds and actions only: never the matched text
        log.info("%s: personal data in the answer: %s", request_id, ", ".join(findings))

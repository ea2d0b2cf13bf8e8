"""The Anthropic-compatible surface: ``POST /v1/messages``, streamed or not, for any upstream.

A plain ASGI handler like the OpenAI surface: it authenticates (``x-api-key`` as Anthropic's
clients send it, or ``Authorization: Bearer``), checks the Messages request, translates it to
the gateway's OpenAI format, runs it through the pipeline, and translates the reply (or the
event stream) back. Errors are rendered in Anthropic's shape by `api.errors.error_body`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from starlette.types import Receive, Scope, Send

from switchboard.api.asgi import header, read_json, send_json
from switchboard.api.errors import ANTHROPIC_MESSAGES, error_body, error_headers
from switchboard.api.streaming import StreamResponse
from switchboard.auth.bearer import bearer_token
from switchboard.auth.keys import Caller
from switchboard.errors import AuthenticationFailed, InvalidRequest, SwitchboardError
from switchboard.gateway.pipeline import route_headers
from switchboard.gateway.tokens import estimate_prompt_tokens
from switchboard.metering.usage import UsageEvent
from switchboard.providers.anthropic_events import AnthropicEventEncoder, sse_event
from switchboard.providers.anthropic_inbound import (
    anthropic_message_from_openai,
    check_messages,
    openai_request_from_anthropic,
)
from switchboard.runtime import Runtime

log = logging.getLogger("switchboard.api")
ENDPOINT = "messages"


def _sse_error(exc: SwitchboardError) -> bytes:
    return sse_event(error_body(ANTHROPIC_MESSAGES, exc))


def _headers(event: UsageEvent) -> list[tuple[bytes, bytes]]:
    # Anthropic's SDKs read the request id from ``request-id``.
    return [(b"request-id", event.request_id.encode()), *route_headers(event)]


async def _caller(rt: Runtime, scope: Scope) -> Caller:
    api_key = header(scope, b"x-api-key")
    authorization = header(scope, b"authorization")
    if api_key is not None and api_key.strip():
        token = api_key.strip()
    elif authorization is not None:
        token = bearer_token(authorization)
    else:
        raise AuthenticationFailed(
            "missing API key: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'",
            code="missing_api_key",
        )
    return await rt.keys.authenticate(token, header(scope, b"x-tenant-id"))


async def create_message(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    caller = await _caller(rt, scope)
    gateway = rt.gateway
    with gateway.metered(caller, ENDPOINT) as event:
        body = await read_json(scope, receive, rt.settings.max_body_bytes)
        check_messages(body)
        chat = openai_request_from_anthropic(body)
        if isinstance(chat.get("user"), str):
            event.user_id = chat["user"]
        if chat.get("stream"):
            stream = await gateway.stream_chat(
                caller,
                event,
                chat,
                include_usage=True,
                cache_control=header(scope, b"cache-control"),
            )
            encoder = AnthropicEventEncoder(
                body["model"], input_tokens=estimate_prompt_tokens(chat["messages"])
            )
            response = StreamResponse(
                stream,
                media_type="text/event-stream",
                encode=encoder,
                encode_error=_sse_error,
                headers=_headers(event),
            )
            await response(scope, receive, send)
            return
        result = await gateway.chat(
            caller, event, chat, cache_control=header(scope, b"cache-control")
        )
        message = anthropic_message_from_openai(result, str(result.get("model") or body["model"]))
        await send_json(send, 200, orjson.dumps(message), _headers(event))


def _check_method(scope: Scope) -> None:
    if scope["method"] != "POST":
        error = InvalidRequest(f"{ANTHROPIC_MESSAGES} takes POST", code="method_not_allowed")
        error.status_code = 405
        raise error


class AnthropicSurface:
    """The ASGI app for ``/v1/messages``; ``runtime`` is read once the lifespan has built it."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            _check_method(scope)
            await create_message(self._runtime(), scope, receive, send)
        except SwitchboardError as exc:
            body = orjson.dumps(error_body(ANTHROPIC_MESSAGES, exc))
            await send_json(send, exc.status_code, body, error_headers(exc))
        except Exception:
            log.exception("unhandled error on %s", ANTHROPIC_MESSAGES)
            internal = SwitchboardError("internal error", code="internal_error")
            await send_json(send, 500, orjson.dumps(error_body(ANTHROPIC_MESSAGES, internal)))

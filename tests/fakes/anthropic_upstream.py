"""Fake Anthropic API: ``POST /v1/messages`` (JSON + SSE events) and ``GET /v1/models``.

See :mod:`fakes.behaviour` for the trigger models (``error-<code>``, ``slow-<ms>``, ``stall``,
``cut-<n>``); additionally model ``stream-overloaded`` streams one word and then an ``error``
event (``overloaded_error``), as the real API does when it runs out of capacity mid-stream.
Replies are cut at ``max_tokens`` words (``stop_reason: max_tokens``). Every request is
appended to ``app.state.requests`` as a :class:`fakes.behaviour.RecordedRequest`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .behaviour import (
    RecordedRequest,
    Reply,
    ToolCall,
    build_reply,
    count_words,
    error_message,
    new_id,
    parse_trigger,
    pause,
    record_request,
)
from .responses import AbortableStreamingResponse, json_response, paced_stream, retry_headers

VERSION_HEADER = "anthropic-version"
MIDSTREAM_ERROR_MODEL = "stream-overloaded"
MODELS = (
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
)
_CREATED_AT = "2025-01-01T00:00:00Z"

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(status: int, message: str | None = None) -> Response:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the status."""
    body = {
        "type": "error",
        "error": {"type": error_type(status), "message": message or error_message(status)},
        "request_id": new_id("req_"),
    }
    return json_response(body, status, retry_headers(status))


def event(payload: dict[str, Any]) -> bytes:
    name = str(payload["type"]).encode()
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _block_text(content: object) -> str:
    """Text of Anthropic ``content``: a string or a list of blocks (text blocks only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def openai_view(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation as :func:`fakes.behaviour.build_reply` reads it (OpenAI roles)."""
    system = _block_text(body.get("system"))
    view: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in body["messages"]:
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        view.extend(
            {"role": "tool", "content": _block_text(block.get("content"))}
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )
        text = _block_text(content)
        if text or not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            view.append({"role": message.get("role"), "content": text})
    return view


def _tools_view(tools: object) -> object:
    if not isinstance(tools, list):
        return None
    return [{"function": {"name": t.get("name")}} for t in tools if isinstance(t, dict)]


def _check(body: Any) -> str | None:
    """Anthropic's 400 message for a malformed Messages request, or None."""
    if not isinstance(body, dict):
        return "There was an issue with the format of your request: invalid JSON body"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return (
                f"messages.{i}.role: Unexpected role {role!r}. The Messages API accepts a "
                'top-level `system` parameter, not "system" as an input message role.'
            )
        content = message.get("content")
        if not isinstance(content, str | list) or not content:
            return f"messages.{i}: all messages must have non-empty content"
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    return None


@dataclass(frozen=True)
class _Message:
    """Renders one reply as an Anthropic ``message`` or as its event stream."""

    id: str
    model: str
    reply: Reply
    max_tokens: int

    @property
    def pieces(self) -> list[str]:
        return self.reply.pieces[: self.max_tokens]

    @property
    def truncated(self) -> bool:
        return self.reply.tool_call is None and len(self.reply.pieces) > self.max_tokens

    @property
    def stop_reason(self) -> str:
        if self.reply.tool_call is not None:
            return "tool_use"
        return "max_tokens" if self.truncated else "end_turn"

    @property
    def output_tokens(self) -> int:
        if self.reply.tool_call is not None:
            return self.reply.completion_tokens
        return count_words("".join(self.pieces))

    def usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.reply.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model}

    def _tool_use(self, call: ToolCall, arguments: dict[str, str]) -> dict[str, Any]:
        return {
            "type": "tool_use",
            "id": f"toolu_{self.id[4:]}",
            "name": call.name,
            "input": arguments,
        }

    def full(self) -> dict[str, Any]:
        call = self.reply.tool_call
        content = (
            [{"type": "text", "text": "".join(self.pieces)}]
            if call is None
            else [self._tool_use(call, call.arguments)]
        )
        return {
            **self._envelope(),
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage(self.output_tokens),
        }

    def head(self) -> list[bytes]:
        message = {
            **self._envelope(),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(1),
        }
        call = self.reply.tool_call
        block = {"type": "text", "text": ""} if call is None else self._tool_use(call, {})
        return [
            event({"type": "message_start", "message": message}),
            event({"type": "content_block_start", "index": 0, "content_block": block}),
            event({"type": "ping"}),
        ]

    def body(self) -> list[bytes]:
        call = self.reply.tool_call
        if call is None:
            return [self._delta({"type": "text_delta", "text": piece}) for piece in self.pieces]
        arguments = orjson.dumps(call.arguments).decode()
        cuts = (0, len(arguments) // 3, 2 * len(arguments) // 3, len(arguments))
        fragments = ["", *(arguments[a:b] for a, b in itertools.pairwise(cuts))]
        return [self._delta({"type": "input_json_delta", "partial_json": f}) for f in fragments]

    def tail(self) -> list[bytes]:
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        return [
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "message_delta",
                    "delta": delta,
                    "usage": {"output_tokens": self.output_tokens},
                }
            ),
            event({"type": "message_stop"}),
        ]

    @staticmethod
    def _delta(delta: dict[str, Any]) -> bytes:
        return event({"type": "content_block_delta", "index": 0, "delta": delta})


def create_app(api_key: str | None = None) -> Starlette:
    """Fake Anthropic upstream; if ``api_key`` is set, requests must carry it (``x-api-key``
    or ``Authorization: Bearer``)."""

    async def guarded(request: Request) -> tuple[RecordedRequest, Response | None]:
        recorded = await record_request(request)
        headers = recorded.headers
        # The API takes the key as x-api-key or, as the 2.x SDKs send it, as a bearer token.
        authorization = headers.get("authorization", "")
        bearer = authorization[7:] if authorization.lower().startswith("bearer ") else None
        sent = headers.get("x-api-key") or bearer
        if api_key is not None and sent != api_key:
            message = "x-api-key header is required" if sent is None else "invalid x-api-key"
            return recorded, anthropic_error(401, message)
        if not headers.get(VERSION_HEADER):
            return recorded, anthropic_error(400, f"{VERSION_HEADER}: header is required")
        return recorded, None

    async def messages(request: Request) -> Response:
        recorded, denied = await guarded(request)
        if denied is not None:
            return denied
        body = recorded.body
        problem = _check(body)
        if problem is not None:
            return anthropic_error(400, problem)
        trigger = parse_trigger(body["model"])
        if trigger.error_status is not None:
            return anthropic_error(trigger.error_status)
        message = _Message(
            id=new_id("msg_"),
            model=body["model"],
            reply=build_reply(openai_view(body), _tools_view(body.get("tools"))),
            max_tokens=body["max_tokens"],
        )
        if body.get("stream") is True:
            body_events = message.body()
            tail = message.tail()
            if body["model"] == MIDSTREAM_ERROR_MODEL:
                overloaded = {"type": "overloaded_error", "message": "Overloaded"}
                body_events, tail = body_events[:1], [event({"type": "error", "error": overloaded})]
            return AbortableStreamingResponse(
                paced_stream(message.head(), body_events, tail, trigger, request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "request-id": new_id("req_")},
            )
        await pause(trigger.response_delay, request)
        return json_response(message.full(), headers={"request-id": new_id("req_")})

    async def models(request: Request) -> Response:
        _, denied = await guarded(request)
        if denied is not None:
            return denied
        data = [
            {"type": "model", "id": model_id, "display_name": name, "created_at": _CREATED_AT}
            for model_id, name in MODELS
        ]
        return json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.requests = []
    app.state.disconnects = 0
    return app

"""Fake OpenAI API: ``/v1/chat/completions`` (JSON + SSE), ``/v1/embeddings``, ``/v1/models``.

See :mod:`fakes.behaviour` for the trigger models.  Every request is appended to
``app.state.requests`` as a :class:`fakes.behaviour.RecordedRequest`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .behaviour import (
    RecordedRequest,
    Reply,
    build_reply,
    embedding_base64,
    embedding_dims,
    embedding_vector,
    error_message,
    leak_reply,
    new_id,
    parse_trigger,
    pause,
    record_request,
)
from .responses import AbortableStreamingResponse, json_response, paced_stream, retry_headers

MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
SYSTEM_FINGERPRINT = "fp_fake0000"
_CREATED = 1_700_000_000

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> Response:
    """``{"error": {"message", "type", "param", "code"}}`` with the given status."""
    kind, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    error = {
        "message": message or error_message(status),
        "type": kind,
        "param": param,
        "code": code or default_code,
    }
    return json_response({"error": error}, status, retry_headers(status))


def create_app(api_key: str | None = None) -> Starlette:
    """Fake OpenAI upstream.

    If ``api_key`` is set, requests must carry ``Authorization: Bearer <api_key>``.
    """

    async def guarded(request: Request) -> tuple[RecordedRequest, Response | None]:
        recorded = await record_request(request)
        if api_key is not None and recorded.headers.get("authorization") != f"Bearer {api_key}":
            return recorded, openai_error(
                401, "Incorrect API key provided.", code="invalid_api_key"
            )
        return recorded, None

    async def chat_completions(request: Request) -> Response:
        recorded, denied = await guarded(request)
        if denied is not None:
            return denied
        body = recorded.body
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body.get("model"), str):
            return openai_error(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(400, "'messages' must be a non-empty array.", param="messages")
        n = body.get("n") or 1
        if not isinstance(n, int) or n < 1:
            return openai_error(400, "'n' must be a positive integer.", param="n")

        scripted = request.app.state.failures.get(body["model"])
        if scripted:  # tests queue statuses per model: "fail twice, then answer"
            return openai_error(scripted.pop(0))
        trigger = parse_trigger(body["model"])
        if trigger.error_status is not None:
            return openai_error(trigger.error_status)
        completion = _Completion(
            id=new_id("chatcmpl-"),
            model=body["model"],
            n=n,
            reply=leak_reply(messages)
            if body["model"] == "leak"
            else build_reply(messages, body.get("tools")),
            # "no-usage" plays a server that ignores stream_options.include_usage
            include_usage=_include_usage(body) and body["model"] != "no-usage",
        )
        if body.get("stream") is True:
            return AbortableStreamingResponse(
                paced_stream(
                    completion.head(), completion.body(), completion.tail(), trigger, request
                ),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        await pause(trigger.response_delay, request)
        return json_response(completion.full())

    async def embeddings(request: Request) -> Response:
        recorded, denied = await guarded(request)
        if denied is not None:
            return denied
        body = recorded.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return openai_error(400, "you must provide a model parameter", param="model")
        items = _embedding_inputs(body.get("input"))
        if items is None:
            return openai_error(
                400, "'input' must be a string, a list of strings or token arrays.", param="input"
            )
        trigger = parse_trigger(body["model"])
        if trigger.error_status is not None:
            return openai_error(trigger.error_status)
        await pause(trigger.response_delay, request)

        dims = embedding_dims(body.get("dimensions"))
        base64_format = body.get("encoding_format") == "base64"
        data = []
        for index, (text, _) in enumerate(items):
            vector = embedding_vector(text, dims)
            encoded: Any = embedding_base64(vector) if base64_format else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(count for _, count in items)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(request: Request) -> Response:
        _, denied = await guarded(request)
        if denied is not None:
            return denied
        data = [
            {"id": name, "object": "model", "created": _CREATED, "owned_by": "system"}
            for name in MODELS
        ]
        return json_response({"object": "list", "data": data})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.requests = []
    app.state.disconnects = 0
    app.state.failures = {}  # model name -> HTTP statuses to answer with, in order
    return app


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _embedding_inputs(value: object) -> list[tuple[str, int]] | None:
    """``(text to hash, token count)`` per input item, or None if malformed."""
    if isinstance(value, str):
        return [(value, max(1, len(value.split())))]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(token, int) for token in value):
        return [(" ".join(map(str, value)), len(value))]
    items: list[tuple[str, int]] = []
    for item in value:
        if isinstance(item, str):
            items.append((item, max(1, len(item.split()))))
        elif isinstance(item, list) and all(isinstance(token, int) for token in item):
            items.append((" ".join(map(str, item)), len(item)))
        else:
            return None
    return items


@dataclass(frozen=True)
class _Completion:
    """Renders one reply as a ``chat.completion`` object or as SSE chunks."""

    id: str
    model: str
    n: int
    reply: Reply
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.reply.tool_call else "stop"

    def usage(self) -> dict[str, Any]:
        completion_tokens = self.reply.completion_tokens * self.n
        return {
            "prompt_tokens": self.reply.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.reply.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def full(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": self._message(i),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
                for i in range(self.n)
            ],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _message(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
        }
        call = self.reply.tool_call
        if call is None:
            message["content"] = self.reply.text
        else:
            message["tool_calls"] = [
                {
                    "id": self._call_id(index),
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": orjson.dumps(call.arguments).decode(),
                    },
                }
            ]
        return message

    def _call_id(self, index: int) -> str:
        return f"call_{self.id.removeprefix('chatcmpl-')}{index:x}"

    # -- streaming -------------------------------------------------------

    def head(self) -> list[bytes]:
        return [
            self._chunk(i, {"role": "assistant", "content": "", "refusal": None})
            for i in range(self.n)
        ]

    def body(self) -> list[bytes]:
        call = self.reply.tool_call
        if call is None:
            return [
                self._chunk(i, {"content": piece})
                for piece in self.reply.pieces
                for i in range(self.n)
            ]
        arguments = orjson.dumps(call.arguments).decode()
        cuts = (0, len(arguments) // 3, 2 * len(arguments) // 3, len(arguments))
        fragments = [arguments[a:b] for a, b in itertools.pairwise(cuts)]
        chunks: list[bytes] = []
        for i in range(self.n):
            opening = {
                "index": 0,
                "id": self._call_id(i),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            chunks.append(self._chunk(i, {"tool_calls": [opening]}))
            chunks.extend(
                self._chunk(i, {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
                for fragment in fragments
            )
        return chunks

    def tail(self) -> list[bytes]:
        chunks = [self._chunk(i, {}, self.finish_reason) for i in range(self.n)]
        if self.include_usage:
            chunks.append(self._sse({**self._envelope(), "choices": [], "usage": self.usage()}))
        chunks.append(b"data: [DONE]\n\n")
        return chunks

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: dict[str, Any] = {**self._envelope(), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return self._sse(chunk)

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    @staticmethod
    def _sse(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

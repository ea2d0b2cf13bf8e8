"""The OpenAI response shapes every adapter builds: the internal format's envelopes."""

from __future__ import annotations

import secrets
import time

import orjson

from switchboard.errors import InvalidRequest
from switchboard.providers.base import JSON


def new_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def tool_call_input(call: JSON, param: str = "messages") -> tuple[str, JSON]:
    """An OpenAI tool call's function name and its arguments as the JSON object every other
    protocol wants (OpenAI sends them as a string); 400 when they are not one."""
    function = call.get("function") or {}
    name = str(function.get("name", ""))
    raw = function.get("arguments") or "{}"
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"tool call {name!r} has arguments that are not JSON", param=param
        ) from exc
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"tool call {name!r} needs a JSON object as arguments", param=param)
    return name, arguments


def completion(*, id: str, model: str, message: JSON, finish_reason: str, usage: JSON) -> JSON:
    """A ``chat.completion`` with one choice."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": usage,
    }


def chunk(*, id: str, created: int, model: str, delta: JSON, finish_reason: str | None) -> JSON:
    """A ``chat.completion.chunk`` with one choice."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }

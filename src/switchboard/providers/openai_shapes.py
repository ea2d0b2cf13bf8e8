"""The OpenAI response shapes every adapter builds: the internal format's envelopes."""

from __future__ import annotations

import secrets
import time

from switchboard.providers.base import JSON


def new_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


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

"""The gateway's OpenAI chunk stream as Ollama's NDJSON stream, for /api/chat and /api/generate.

One `OllamaStreamEncoder` per response: it is stateful, because OpenAI streams a tool call as
argument fragments that Ollama sends whole, and because Ollama's last line carries the counts
and durations of the whole request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from switchboard.api.errors import error_body
from switchboard.api.ollama_format import (
    Shape,
    Timing,
    created_at,
    done_reason,
    tool_arguments,
    tool_call,
)
from switchboard.errors import SwitchboardError
from switchboard.providers.base import JSON


@dataclass(slots=True)
class _PendingCall:
    name: str = ""
    arguments: str = ""


def ndjson_error(exc: SwitchboardError) -> bytes:
    """A failure after the stream started: Ollama's ``{"error": "..."}`` line."""
    return orjson.dumps(error_body("/api/", exc)) + b"\n"


class OllamaStreamEncoder:
    """Batches of OpenAI ``chat.completion.chunk`` dicts in, NDJSON lines out.

    * a content (or reasoning) delta becomes one ``done: false`` line;
    * tool calls are assembled from their fragments and sent as one message with
      ``tool_calls`` when the choice finishes (chat only: /api/generate has no tools);
    * the usage chunk that ends the gateway's stream (``stream_chat(include_usage=True)``)
      becomes the ``done: true`` line with ``done_reason``, the counts and the durations.
    """

    def __init__(
        self,
        model: str,
        *,
        shape: Shape,
        started: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._model = model
        self._shape = shape
        self._started = started
        self._clock = clock
        self._first_token: float | None = None
        self._calls: dict[int, _PendingCall] = {}
        self._done_reason = "stop"
        self._done = False

    def __call__(self, batch: list[JSON]) -> bytes:
        lines: list[bytes] = []
        for chunk in batch:
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) == 0:
                    self._choice(choice, lines)
            usage = chunk.get("usage")
            if usage and not chunk.get("choices") and not self._done:
                self._flush_calls(lines)
                lines.append(self._final(usage))
        return b"".join(lines)

    def _choice(self, choice: JSON, lines: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        thinking = delta.get("reasoning_content")
        if content or thinking:
            self._token()
            lines.append(self._line(content or "", thinking))
        for call in delta.get("tool_calls") or []:
            self._token()
            pending = self._calls.setdefault(call.get("index", 0), _PendingCall())
            function = call.get("function") or {}
            pending.name += function.get("name") or ""
            pending.arguments += function.get("arguments") or ""
        if choice.get("finish_reason"):
            self._done_reason = done_reason(choice["finish_reason"])
            self._flush_calls(lines)

    def _token(self) -> None:
        if self._first_token is None:
            self._first_token = self._clock()

    def _flush_calls(self, lines: list[bytes]) -> None:
        if not self._calls:
            return
        calls = [
            tool_call(c.name, tool_arguments(c.name, c.arguments))
            for _, c in sorted(self._calls.items())
        ]
        self._calls.clear()
        if self._shape == "chat":
            message = {"role": "assistant", "content": "", "tool_calls": calls}
            lines.append(self._dump({"message": message, "done": False}))

    def _line(self, content: str, thinking: str | None) -> bytes:
        if self._shape == "chat":
            message: JSON = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            return self._dump({"message": message, "done": False})
        body: JSON = {"response": content}
        if thinking:
            body["thinking"] = thinking
        return self._dump({**body, "done": False})

    def _final(self, usage: JSON) -> bytes:
        self._done = True
        timing = Timing.between(self._started, self._clock(), self._first_token)
        counts = timing.fields(
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        )
        if self._shape == "chat":
            head: JSON = {"message": {"role": "assistant", "content": ""}}
            reason: JSON = {"done_reason": self._done_reason, "done": True}
        else:
            head = {"response": ""}
            reason = {"done": True, "done_reason": self._done_reason}
        return self._dump({**head, **reason, **counts})

    def _dump(self, fields: JSON) -> bytes:
        line = {"model": self._model, "created_at": created_at(), **fields}
        return orjson.dumps(line) + b"\n"

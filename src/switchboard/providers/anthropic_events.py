"""OpenAI ``chat.completion.chunk`` batches → Anthropic's Messages event stream. No I/O.

The inbound ``/v1/messages`` surface streams whatever upstream serves the model; this encoder
turns the gateway's OpenAI chunks back into the events Anthropic's clients expect::

    event: message_start        the message, empty content
    event: content_block_start  a text or tool_use block (one open at a time)
    event: content_block_delta  text_delta / input_json_delta
    event: content_block_stop
    event: message_delta        stop_reason and usage (sent when the usage chunk arrives)
    event: message_stop
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from switchboard.providers.anthropic_inbound import anthropic_usage, message_id, stop_reason
from switchboard.providers.base import JSON


def sse_event(payload: JSON) -> bytes:
    """One server-sent event named after the payload's ``type``."""
    return (
        b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
    )


class AnthropicEventEncoder:
    """Stateful (one per stream) ``encode(batch) -> bytes`` for `StreamResponse`.

    ``input_tokens`` is what ``message_start`` reports before the upstream's real count
    arrives with the usage chunk (and is then sent in ``message_delta``).
    """

    def __init__(self, model: str, *, input_tokens: int = 0) -> None:
        self.message_id = message_id()
        self._model = model
        self._input_tokens = input_tokens
        self._started = False
        self._finished = False
        self._open: int | None = None  # index of the open content block
        self._open_kind: str | None = None
        self._blocks = 0
        self._tools: dict[int, int] = {}  # OpenAI tool call index → content block index
        self._finish: Any = None

    def __call__(self, batch: list[JSON]) -> bytes:
        out: list[bytes] = []
        for chunk in batch:
            if self._finished:
                break
            if not self._started:
                self._start(out)
            choices = chunk.get("choices")
            if choices:
                self._choice(choices[0], out)
            # Usually a chunk of its own; some servers put it on the finish chunk instead.
            usage = chunk.get("usage")
            if usage and (not choices or choices[0].get("finish_reason")):
                self._end(usage, out)
        return b"".join(out)

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        out.append(sse_event({"type": "message_start", "message": message}))
        out.append(sse_event({"type": "ping"}))

    def _choice(self, choice: JSON, out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open_kind != "text":
                self._open_block({"type": "text", "text": ""}, out)
            self._block_delta({"type": "text_delta", "text": text}, out)
        for call in delta.get("tool_calls") or []:
            self._tool_call(call, out)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._close_block(out)

    def _tool_call(self, call: JSON, out: list[bytes]) -> None:
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        block = self._tools.get(index)
        if block is None:
            tool_use: JSON = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{secrets.token_hex(12)}",
                "name": function.get("name") or "",
                "input": {},
            }
            self._tools[index] = self._open_block(tool_use, out)
            block = self._tools[index]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(sse_event({"type": "content_block_delta", "index": block, "delta": delta}))

    def _open_block(self, block: JSON, out: list[bytes]) -> int:
        self._close_block(out)
        index = self._blocks
        self._blocks += 1
        self._open, self._open_kind = index, block["type"]
        out.append(
            sse_event({"type": "content_block_start", "index": index, "content_block": block})
        )
        return index

    def _block_delta(self, delta: JSON, out: list[bytes]) -> None:
        out.append(sse_event({"type": "content_block_delta", "index": self._open, "delta": delta}))

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(sse_event({"type": "content_block_stop", "index": self._open}))
            self._open, self._open_kind = None, None

    def _end(self, usage: JSON, out: list[bytes]) -> None:
        self._close_block(out)
        self._finished = True
        delta = {"stop_reason": stop_reason(self._finish), "stop_sequence": None}
        event = {"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}
        out.append(sse_event(event))
        out.append(sse_event({"type": "message_stop"}))

"""Anthropic's Messages event stream → OpenAI ``chat.completion.chunk`` dicts. No I/O.

Anthropic streams server-sent events::

    message_start → (content_block_start → content_block_delta* → content_block_stop)*
                  → message_delta → message_stop          (ping anywhere, error instead of the rest)

Each ``data:`` line names its own ``type``, so the ``event:`` lines are not needed.
"""

from __future__ import annotations

import time
from typing import Any

from switchboard.errors import UpstreamOverloaded, UpstreamUnavailable
from switchboard.providers.anthropic_format import completion_id, finish_reason, openai_usage
from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import chunk
from switchboard.providers.transport import loads_line

_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)


class AnthropicStreamDecoder:
    """Turns Anthropic SSE lines into OpenAI chunks (stateful: one per stream).

    Yields a role chunk first, then text and tool-call deltas, a finish chunk and a final
    usage chunk (``choices == []``) once ``message_stop`` arrives.
    """

    def __init__(self, model: str) -> None:
        self._id = completion_id()
        self._created = int(time.time())
        self._model = model
        self._role_sent = False
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._usage: dict[str, int] = {}
        self._stop_reason: Any = None

    def __call__(self, lines: list[bytes]) -> list[JSON]:
        chunks: list[JSON] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # event: names, comments, the blank line between events
            payload = line[5:].strip()
            if not payload:
                continue
            event = loads_line(payload)
            if isinstance(event, dict):
                self._decode(event, chunks)
        return chunks

    def _chunk(self, delta: JSON, reason: str | None = None) -> JSON:
        return chunk(
            id=self._id,
            created=self._created,
            model=self._model,
            delta=delta,
            finish_reason=reason,
        )

    def _decode(self, event: JSON, chunks: list[JSON]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id = completion_id(message.get("id"))
            self._take_usage(message.get("usage"))
            self._role_sent = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "content_block_start":
            self._block_start(event, chunks)
        elif kind == "content_block_delta":
            self._block_delta(event, chunks)
        elif kind == "message_delta":
            self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
            self._take_usage(event.get("usage"))
        elif kind == "message_stop":
            chunks.append(self._chunk({}, finish_reason(self._stop_reason)))
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = openai_usage(self._usage)
            chunks.append(usage_chunk)
        elif kind == "error":
            error = event.get("error") or {}
            kind = error.get("type", "error")
            fails = UpstreamOverloaded if kind == "overloaded_error" else UpstreamUnavailable
            raise fails(f"Anthropic error mid-stream: {kind}: {error.get('message', 'no details')}")
        # ping, content_block_stop and event types added later carry nothing to relay

    def _take_usage(self, usage: Any) -> None:
        """``message_start`` has the input, ``message_delta`` cumulative totals."""
        if isinstance(usage, dict):
            for name in _USAGE_FIELDS:
                value = usage.get(name)
                if isinstance(value, int):
                    self._usage[name] = value

    def _delta(self, delta: JSON, chunks: list[JSON]) -> None:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        chunks.append(self._chunk(delta))

    def _block_start(self, event: JSON, chunks: list[JSON]) -> None:
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            self._delta({"content": block["text"]}, chunks)
        elif kind == "tool_use":
            index = len(self._tool_index)
            self._tool_index[int(event.get("index") or 0)] = index
            call = {
                "index": index,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            self._delta({"tool_calls": [call]}, chunks)

    def _block_delta(self, event: JSON, chunks: list[JSON]) -> None:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            self._delta({"content": delta["text"]}, chunks)
        elif kind == "thinking_delta" and delta.get("thinking"):
            self._delta({"reasoning_content": delta["thinking"]}, chunks)
        elif kind == "input_json_delta" and delta.get("partial_json"):
            index = self._tool_index.get(int(event.get("index") or 0))
            if index is not None:
                fragment = {"index": index, "function": {"arguments": delta["partial_json"]}}
                self._delta({"tool_calls": [fragment]}, chunks)

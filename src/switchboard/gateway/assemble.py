"""Between a stream and a complete answer, in the internal (OpenAI) format.

`assemble` folds a stream's chunks into the ``chat.completion`` they spell out (text, tool
calls rebuilt from their argument fragments, finish reason, usage); `replay` turns a
completion back into chunks. Together they let one cached answer serve a plain request and a
streamed one alike.
"""

from __future__ import annotations

from typing import Any

from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import chunk as make_chunk


def assemble(chunks: list[JSON]) -> JSON:
    choices: dict[int, dict[str, Any]] = {}
    usage: JSON | None = None
    first: JSON = chunks[0] if chunks else {}
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            state = choices.setdefault(
                choice.get("index", 0), {"content": [], "calls": {}, "finish": None}
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = state["calls"].setdefault(
                    call.get("index", 0), {"id": None, "name": "", "arguments": []}
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"].append(function.get("arguments") or "")
            state["finish"] = choice.get("finish_reason") or state["finish"]
    return {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": int(first.get("created") or 0),
        "model": first.get("model", ""),
        "choices": [
            {
                "index": index,
                "message": _message(state),
                "finish_reason": state["finish"] or "stop",
                "logprobs": None,
            }
            for index, state in sorted(choices.items())
        ],
        "usage": usage or {},
    }


def _message(state: dict[str, Any]) -> JSON:
    calls = [
        {
            "id": slot["id"],
            "type": "function",
            "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])},
        }
        for _, slot in sorted(state["calls"].items())
    ]
    text = "".join(state["content"])
    message: JSON = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def replay(completion: JSON, *, include_usage: bool) -> list[JSON]:
    """The chunks a stream of ``completion`` would have sent (one content delta per choice)."""
    common = {
        "id": completion.get("id", ""),
        "created": int(completion.get("created") or 0),
        "model": completion.get("model", ""),
    }
    chunks: list[JSON] = []
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: JSON = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        for item in (
            make_chunk(**common, delta=delta, finish_reason=None),
            make_chunk(**common, delta={}, finish_reason=choice.get("finish_reason") or "stop"),
        ):
            item["choices"][0]["index"] = index
            chunks.append(item)
    if include_usage and completion.get("usage"):
        usage_chunk = make_chunk(**common, delta={}, finish_reason=None)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = completion["usage"]
        chunks.append(usage_chunk)
    return chunks

"""Pure translation from OpenAI's chat format to Anthropic's Messages API and back. No I/O.

Outbound (the `AnthropicProvider`): `to_anthropic_request` and `from_anthropic_message`; the
stream decoder is in `anthropic_stream`. The reverse direction, for the inbound
``/v1/messages`` surface, is in `anthropic_inbound` and `anthropic_events`.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from switchboard.errors import InvalidRequest
from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import completion, new_id, tool_call_input

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; OpenAI clients often leave it out."""

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` → OpenAI ``finish_reason``."""

_ROLES = {"user": "user", "assistant": "assistant", "tool": "user"}


def completion_id(message_id: object = None) -> str:
    """An OpenAI completion id, carrying the upstream message id when there is one."""
    if isinstance(message_id, str) and message_id:
        return f"chatcmpl-{message_id.removeprefix('msg_')}"
    return new_id()


# --- OpenAI request → Anthropic request -----------------------------------------------------


def to_anthropic_request(body: JSON, *, stream: bool) -> JSON:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Anthropic models return one choice; n must be 1", param="n")
    system, messages = _messages(body["messages"])
    out: JSON = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    if body.get("temperature") is not None:
        # OpenAI's range is 0-2, Anthropic's 0-1: the top of one is the top of the other.
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = [_tool(tool) for tool in body["tools"]]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    return out


def _messages(messages: list[JSON]) -> tuple[str, list[JSON]]:
    """The top-level ``system`` text and the user/assistant turns, same-role turns merged."""
    system: list[str] = []
    out: list[JSON] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role in ("system", "developer"):
            system.append(_text(msg.get("content"), f"messages[{i}].content"))
            continue
        if role not in _ROLES:
            raise InvalidRequest(
                f"Anthropic models do not take {role!r} messages", param=f"messages[{i}].role"
            )
        blocks = _blocks(i, msg)
        if out and out[-1]["role"] == _ROLES[role]:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": _ROLES[role], "content": blocks})
    return "\n\n".join(s for s in system if s), out


def _blocks(i: int, msg: JSON) -> list[JSON]:
    param = f"messages[{i}].content"
    if msg["role"] == "tool":
        content = msg.get("content")
        result: JSON = {"type": "tool_result", "tool_use_id": msg.get("tool_call_id") or ""}
        if isinstance(content, list):
            result["content"] = [_part(part, param) for part in content]
        else:
            result["content"] = content or ""
        return [result]
    blocks = _content_blocks(msg.get("content"), param)
    for call in msg.get("tool_calls") or []:
        blocks.append(_tool_use(call, f"messages[{i}].tool_calls"))
    return blocks


def _content_blocks(content: Any, param: str) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = [_part(part, param) for part in content]
    return [b for b in blocks if b["type"] != "text" or b["text"]]


def _part(part: JSON, param: str) -> JSON:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else ""
        return {"type": "image", "source": image_source(url, param)}
    raise InvalidRequest(f"Anthropic models do not take {kind!r} content parts", param=param)


def image_source(url: str, param: str) -> JSON:
    """An Anthropic image ``source`` for an OpenAI image URL (``data:`` or http(s))."""
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        media_type, _, encoding = header.removeprefix("data:").partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise InvalidRequest(
                "an inline image must be a data: URL with base64 content", param=param
            )
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise InvalidRequest("an image URL must be a data: URL or http(s)", param=param)


def _text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequest("a system message may only hold text", param=param)
        texts.append(part.get("text") or "")
    return "".join(texts)


def _tool_use(call: JSON, param: str) -> JSON:
    name, arguments = tool_call_input(call, param)
    call_id = call.get("id") or f"toolu_{secrets.token_hex(12)}"
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _tool(tool: JSON) -> JSON:
    if tool.get("type", "function") != "function":
        raise InvalidRequest(
            f"Anthropic models take function tools, not {tool.get('type')!r}", param="tools"
        )
    function = tool["function"]
    out: JSON = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> JSON | None:
    out: JSON | None
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest(
            "tool_choice must be auto, none, required or a named function", param="tool_choice"
        )
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto already
    return out


# --- Anthropic response → OpenAI chat.completion ---------------------------------------------


def openai_usage(usage: Any) -> JSON:
    """Anthropic usage → OpenAI usage; cache reads and writes are prompt tokens too."""
    usage = usage if isinstance(usage, dict) else {}
    fresh = int(usage.get("input_tokens") or 0)
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = fresh + cache_read + cache_write
    completion = int(usage.get("output_tokens") or 0)
    details: JSON = {"cached_tokens": cache_read}
    if cache_write:  # metered apart: cache writes cost more than plain input
        details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def from_anthropic_message(data: JSON, model: str) -> JSON:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JSON] = []
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id") or f"toolu_{secrets.token_hex(12)}",
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return completion(
        id=completion_id(data.get("id")),
        model=model,
        message=message,
        finish_reason=finish_reason(data.get("stop_reason")),
        usage=openai_usage(data.get("usage")),
    )

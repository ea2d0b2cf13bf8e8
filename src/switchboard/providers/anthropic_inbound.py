"""Pure translation for the inbound Anthropic surface: a Messages API request becomes the
gateway's OpenAI chat request, and an OpenAI ``chat.completion`` becomes an Anthropic
``message``. No I/O. The event stream encoder is in `anthropic_events`."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from switchboard.errors import InvalidRequest, UpstreamUnavailable
from switchboard.providers.base import JSON

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI ``finish_reason`` → Anthropic ``stop_reason``."""


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def stop_reason(finish: Any) -> str:
    return STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def anthropic_usage(usage: Any) -> JSON:
    """OpenAI usage → Anthropic usage: ``input_tokens`` excludes tokens read from the cache."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    return {
        "input_tokens": max(0, prompt - cached - written),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


# --- checks, in Anthropic's words ------------------------------------------------------------


def _need(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidRequest(f"{param}: {message}", param=param)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_messages(body: Any) -> None:
    """What the Messages API insists on, checked before anything is translated."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    _need(isinstance(model, str) and bool(model), "model", "Field required")
    max_tokens = body.get("max_tokens")
    ok = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1
    _need(ok, "max_tokens", "Field required: an integer >= 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required", param="messages")
    for i, message in enumerate(messages):
        param = f"messages.{i}"
        _need(isinstance(message, dict), param, "each message must be an object")
        _need(message.get("role") in ("user", "assistant"), f"{param}.role", "user or assistant")
        content = message.get("content")
        ok = isinstance(content, str) or (
            isinstance(content, list)
            and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
        )
        _need(ok, f"{param}.content", "a string or a list of content blocks")
    system = body.get("system")
    _need(system is None or isinstance(system, str | list), "system", "a string or text blocks")
    for name, low, high in (("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        _need(value is None or (_is_number(value) and low <= value <= high), name, "0 to 1")
    stream = body.get("stream")
    _need(stream is None or isinstance(stream, bool), "stream", "true or false")
    stops = body.get("stop_sequences")
    _need(
        stops is None or (isinstance(stops, list) and all(isinstance(s, str) for s in stops)),
        "stop_sequences",
        "a list of strings",
    )
    metadata = body.get("metadata")
    _need(metadata is None or isinstance(metadata, dict), "metadata", "an object")
    tools = body.get("tools")
    _need(tools is None or isinstance(tools, list), "tools", "a list")
    for i, tool in enumerate(tools or []):
        ok = isinstance(tool, dict) and isinstance(tool.get("name"), str)
        _need(ok, f"tools.{i}", "each tool needs a name")
    choice = body.get("tool_choice")
    _need(
        choice is None or (isinstance(choice, dict) and isinstance(choice.get("type"), str)),
        "tool_choice",
        "an object with a type",
    )


# --- Anthropic request → OpenAI request -----------------------------------------------------


def openai_request_from_anthropic(body: JSON) -> JSON:
    """A checked (`check_messages`) Messages request as an OpenAI chat request."""
    messages: list[JSON] = []
    system = _system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(body["messages"]):
        if message["role"] == "assistant":
            messages.append(_assistant(message["content"], f"messages.{i}.content"))
        else:
            messages += _user(message["content"], f"messages.{i}.content")
    out: JSON = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    if body.get("stream"):
        out["stream"] = True
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    user_id = (body.get("metadata") or {}).get("user_id")
    if isinstance(user_id, str):
        out["user"] = user_id
    if body.get("tools"):
        out["tools"] = [_function(tool, i) for i, tool in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_openai_tool_choice(choice))
    return out


def _system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for block in system:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest("system: only text blocks are allowed", param="system")
        texts.append(str(block.get("text") or ""))
    return "\n\n".join(texts)


def _user(content: str | list[JSON], param: str) -> list[JSON]:
    """One user turn: its tool results become ``tool`` messages, the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[JSON] = []
    parts: list[JSON] = []
    for block in content:
        kind = block["type"]
        if kind == "tool_result":
            if parts:
                out.append({"role": "user", "content": _collapse(parts)})
                parts = []
            out.append(_tool_message(block, param))
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append(_image_part(block, param))
        else:
            raise InvalidRequest(f"{param}: {kind!r} blocks are not supported here", param=param)
    if parts:
        out.append({"role": "user", "content": _collapse(parts)})
    return out


def _collapse(parts: list[JSON]) -> str | list[JSON]:
    """A lone text part as a plain string, which every upstream understands."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _image_part(block: JSON, param: str) -> JSON:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise InvalidRequest(f"{param}: images need a base64 or url source", param=param)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: JSON, param: str) -> JSON:
    content = block.get("content")
    if isinstance(content, list):
        texts = [str(b.get("text") or "") for b in content if b.get("type") == "text"]
        text = "\n".join(texts)
    else:
        text = str(content or "")
    if block.get("is_error"):
        text = f"Error: {text}"
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise InvalidRequest(f"{param}: tool_result needs its tool_use_id", param=param)
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _assistant(content: str | list[JSON], param: str) -> JSON:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[JSON] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {"name": str(block.get("name") or ""), "arguments": arguments},
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise InvalidRequest(f"{param}: {kind!r} blocks are not supported here", param=param)
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _function(tool: JSON, i: int) -> JSON:
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(
            f"tools.{i}: server tool {tool['type']!r} is not supported", param=f"tools.{i}"
        )
    function: JSON = {
        "name": tool["name"],
        "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _openai_tool_choice(choice: JSON) -> JSON:
    kind = choice["type"]
    out: JSON
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest("tool_choice: auto, any, tool or none", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# --- OpenAI chat.completion → Anthropic message ---------------------------------------------


def anthropic_message_from_openai(result: JSON, model: str) -> JSON:
    choices = result.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[JSON] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    content.extend(_tool_use_block(call) for call in message.get("tool_calls") or [])
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(result.get("usage")),
    }


def _tool_use_block(call: JSON) -> JSON:
    function = call.get("function") or {}
    name = function.get("name", "")
    raw = function.get("arguments") or "{}"
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(
            f"the model called {name!r} with arguments that are not JSON"
        ) from exc
    if not isinstance(arguments, dict):
        raise UpstreamUnavailable(f"the model called {name!r} with arguments that are no object")
    call_id = call.get("id") or f"toolu_{secrets.token_hex(12)}"
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}

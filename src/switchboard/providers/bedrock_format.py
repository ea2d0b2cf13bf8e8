"""Pure translation between OpenAI's chat format and Amazon Bedrock's Converse API. No I/O.

A Converse request carries the model id in its URL, not its body::

    {"messages": [{"role": "user" | "assistant", "content": [<block>, ...]}],
     "system": [{"text": ...}],
     "inferenceConfig": {"maxTokens", "temperature", "topP", "stopSequences"},
     "toolConfig": {"tools": [{"toolSpec": {...}}], "toolChoice": {"auto" | "any" | "tool"}}}

Blocks are ``{"text"}``, ``{"image": {"format", "source": {"bytes": <base64>}}}``,
``{"toolUse": {"toolUseId", "name", "input"}}`` and ``{"toolResult": {"toolUseId",
"content"}}``. Bedrock wants strictly alternating user/assistant turns, so OpenAI's system and
developer messages move to ``system``, tool results become blocks of a user turn, and
consecutive turns of one role merge. Not translated (Converse has no equivalent): ``seed``,
penalties, ``logprobs``, ``response_format``; ``tool_choice: "none"`` drops the tools unless
the history already holds tool blocks (Bedrock then needs them declared).
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from collections.abc import Mapping
from typing import Any

import orjson

from switchboard.errors import (
    InvalidRequest,
    RateLimited,
    SwitchboardError,
    UpstreamOverloaded,
    UpstreamUnavailable,
)
from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import chunk, completion, new_id, tool_call_input

IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
TITAN_TEXT_EMBEDDINGS = "amazon.titan-embed-text-"
# HTTP status of each Bedrock error type (from the service model), for the ones we map by name.
ERROR_STATUS = {
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 429,
    "ModelNotReadyException": 429,
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 403,
    "MissingAuthenticationTokenException": 403,
    "ExpiredTokenException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ModelStreamErrorException": 424,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}


def error_status(error_type: str | None, status: int) -> int:
    """The status to map a Bedrock error by: its type's (``x-amzn-ErrorType``, or an event
    stream's ``:exception-type``) when known, else the HTTP status it came with."""
    if not error_type:
        return status
    name = error_type.split(":", 1)[0].strip()
    return ERROR_STATUS.get(name[:1].upper() + name[1:], status)


def error_message(raw: bytes) -> str:
    """The ``message`` of a Bedrock error body (``Message`` in some AWS services)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace").strip() or "no details"
    if isinstance(data, dict):
        message = data.get("message", data.get("Message"))
        if isinstance(message, str):
            return message[:500]
    return "no details"


# --- request ------------------------------------------------------------------------------


def to_converse(body: JSON) -> JSON:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Bedrock models return one choice; n must be 1", param="n")
    system, messages = _messages(body["messages"])
    out: JSON = {"messages": messages}
    if system:
        out["system"] = system
    inference = _inference_config(body)
    if inference:
        out["inferenceConfig"] = inference
    tools = _tool_config(body, messages)
    if tools:
        out["toolConfig"] = tools
    return out


def _inference_config(body: JSON) -> JSON:
    config: JSON = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return config


def _messages(messages: list[JSON]) -> tuple[list[JSON], list[JSON]]:
    system: list[JSON] = []
    out: list[JSON] = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text(msg.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(msg)]
        elif role == "assistant":
            blocks = _assistant_blocks(msg)
        elif role == "user":
            blocks = _user_blocks(msg.get("content"), i)
        else:
            raise InvalidRequest(
                f"Bedrock models take no {role!r} messages", param=f"messages[{i}].role"
            )
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _user_blocks(content: Any, index: int) -> list[JSON]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[JSON] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url", {}).get("url", ""), index))
        else:
            raise InvalidRequest(
                f"Bedrock models do not take {kind!r} content here",
                param=f"messages[{index}].content",
            )
    return blocks


def _image(url: str, index: int) -> JSON:
    header, sep, data = url.partition(",")
    mime = header.removeprefix("data:").split(";", 1)[0].lower()
    if not url.startswith("data:") or not sep or not header.endswith(";base64"):
        raise InvalidRequest(
            "Bedrock models take images inline: send a data: URL with base64 content",
            param=f"messages[{index}].content",
        )
    if mime not in IMAGE_FORMATS:
        raise InvalidRequest(
            f"Bedrock models take PNG, JPEG, GIF or WebP images, not {mime or 'unknown'!r}",
            param=f"messages[{index}].content",
        )
    return {"image": {"format": IMAGE_FORMATS[mime], "source": {"bytes": data}}}


def _assistant_blocks(msg: JSON) -> list[JSON]:
    text = _text(msg.get("content"))
    blocks: list[JSON] = [{"text": text}] if text else []
    for call in msg.get("tool_calls") or []:
        name, args = tool_call_input(call)
        blocks.append({"toolUse": {"toolUseId": call.get("id", ""), "name": name, "input": args}})
    return blocks


def _tool_result(msg: JSON) -> JSON:
    return {
        "toolResult": {
            "toolUseId": msg.get("tool_call_id", ""),
            "content": [{"text": _text(msg.get("content"))}],
        }
    }


def _tool_config(body: JSON, messages: list[JSON]) -> JSON | None:
    specs = [
        _tool_spec(tool["function"])
        for tool in body.get("tools") or []
        if tool.get("type", "function") == "function" and isinstance(tool.get("function"), dict)
    ]
    if not specs:
        return None
    config: JSON = {"tools": specs}
    choice = body.get("tool_choice")
    if choice == "none":
        return config if _has_tool_blocks(messages) else None
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name", "")
        config["toolChoice"] = {"tool": {"name": name}}
    return config


def _tool_spec(function: JSON) -> JSON:
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    spec: JSON = {"name": function.get("name", ""), "inputSchema": {"json": schema}}
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def _has_tool_blocks(messages: list[JSON]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block for m in messages for block in m["content"]
    )


# --- response -----------------------------------------------------------------------------


def converse_usage(usage: Mapping[str, Any]) -> JSON:
    """OpenAI usage from Converse's; prompt tokens include cache reads and writes, which
    Bedrock counts apart from ``inputTokens``."""
    cached = int(usage.get("cacheReadInputTokens") or 0)
    written = int(usage.get("cacheWriteInputTokens") or 0)
    prompt = int(usage.get("inputTokens") or 0) + cached + written
    completion = int(usage.get("outputTokens") or 0)
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached or written:
        details: JSON = {"cached_tokens": cached}
        if written:  # metered apart: cache writes cost more than plain input
            details["cache_write_tokens"] = written
        out["prompt_tokens_details"] = details
    return out


def finish_reason(stop_reason: Any, had_tool_calls: bool = False) -> str:
    reason = FINISH_REASONS.get(stop_reason, "stop")
    return "tool_calls" if had_tool_calls and reason == "stop" else reason


def from_converse(data: JSON, model: str) -> JSON:
    msg = (data.get("output") or {}).get("message") or {}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[JSON] = []
    for block in msg.get("content") or []:
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input", {})).decode()
            calls.append(
                {
                    "id": use.get("toolUseId") or f"call_{secrets.token_hex(12)}",
                    "type": "function",
                    "function": {"name": use.get("name", ""), "arguments": arguments},
                }
            )
        elif "reasoningContent" in block:
            text = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if text:
                reasoning.append(text)
    message: JSON = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return completion(
        id=new_id(),
        model=model,
        message=message,
        finish_reason=finish_reason(data.get("stopReason"), bool(calls)),
        usage=converse_usage(data.get("usage") or {}),
    )


# --- stream -------------------------------------------------------------------------------


def stream_error(exception_type: str | None, payload: bytes, provider: str) -> SwitchboardError:
    """An exception event (``:message-type: exception``) as one of our errors."""
    kind = exception_type or "unknown"
    message = f"provider {provider!r} failed mid-stream ({kind}): {error_message(payload)}"
    status = error_status(kind, 502)
    if status == 429:
        return RateLimited(message, code="upstream_rate_limited")
    if status == 400:
        return InvalidRequest(message, code="upstream_bad_request")
    if status == 503:
        return UpstreamOverloaded(message)
    return UpstreamUnavailable(message)


class BedrockStreamDecoder:
    """ConverseStream events to OpenAI chunks (stateful: one per stream).

    Call it with each decoded event-stream message's headers and payload. ``done`` turns true
    at ``messageStop``; the usage chunk follows from the ``metadata`` event after it.
    """

    def __init__(self, model: str, provider: str = "bedrock") -> None:
        self._id = new_id()
        self._created = int(time.time())
        self._model = model
        self._provider = provider
        self._role_sent = False
        self._tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool call index
        self.done = False

    def _chunk(self, delta: JSON, reason: str | None = None) -> JSON:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return chunk(
            id=self._id,
            created=self._created,
            model=self._model,
            delta=delta,
            finish_reason=reason,
        )

    def __call__(self, headers: Mapping[str, Any], payload: bytes) -> list[JSON]:
        kind = headers.get(":message-type")
        if kind == "exception":
            raise stream_error(headers.get(":exception-type"), payload, self._provider)
        if kind == "error":
            code, text = headers.get(":error-code"), headers.get(":error-message")
            raise UpstreamUnavailable(
                f"provider {self._provider!r} failed mid-stream ({code}): {text}"
            )
        if kind != "event":
            return []
        try:
            data = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError as exc:
            raise UpstreamUnavailable(
                f"provider {self._provider!r} sent a malformed stream event"
            ) from exc
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"provider {self._provider!r} sent a malformed stream event")
        return self._event(headers.get(":event-type"), data)

    def _event(self, event: Any, data: JSON) -> list[JSON]:
        if event == "messageStart":
            return [self._chunk({"content": ""})]
        if event == "contentBlockStart":
            return self._block_start(data)
        if event == "contentBlockDelta":
            return self._block_delta(data)
        if event == "messageStop":
            self.done = True
            reason = finish_reason(data.get("stopReason"), bool(self._tools))
            return [self._chunk({}, reason)]
        if event == "metadata":
            usage = self._chunk({})
            usage["choices"] = []
            usage["usage"] = converse_usage(data.get("usage") or {})
            return [usage]
        return []  # contentBlockStop, and events newer than this adapter

    def _block_start(self, data: JSON) -> list[JSON]:
        use = (data.get("start") or {}).get("toolUse")
        if not isinstance(use, dict):
            return []
        index = self._tools[data.get("contentBlockIndex", -1)] = len(self._tools)
        call = {
            "index": index,
            "id": use.get("toolUseId") or f"call_{secrets.token_hex(12)}",
            "type": "function",
            "function": {"name": use.get("name", ""), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, data: JSON) -> list[JSON]:
        delta = data.get("delta") or {}
        if isinstance(delta.get("text"), str):
            return [self._chunk({"content": delta["text"]})] if delta["text"] else []
        if isinstance(delta.get("toolUse"), dict):
            index = self._tools.get(data.get("contentBlockIndex", -1))
            if index is None:
                raise UpstreamUnavailable(
                    f"provider {self._provider!r} streamed tool input before its tool call"
                )
            fragment = delta["toolUse"].get("input") or ""
            call = {"index": index, "function": {"arguments": fragment}}
            return [self._chunk({"tool_calls": [call]})] if fragment else []
        reasoning = (delta.get("reasoningContent") or {}).get("text")
        if reasoning:
            return [self._chunk({"reasoning_content": reasoning})]
        return []


# --- embeddings (InvokeModel, Amazon Titan Text Embeddings) -------------------------------


def to_titan_embed(body: JSON) -> list[JSON]:
    """One InvokeModel body per input: Titan embeds one text per call."""
    if TITAN_TEXT_EMBEDDINGS not in body["model"]:
        raise InvalidRequest(
            "Bedrock embeddings support Amazon Titan Text Embeddings "
            f"({TITAN_TEXT_EMBEDDINGS}*) only, not {body['model']!r}",
            param="model",
        )
    inputs = body["input"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not all(isinstance(item, str) for item in inputs):
        raise InvalidRequest("Titan embeds text only: input must be strings", param="input")
    extra = {"dimensions": body["dimensions"]} if body.get("dimensions") else {}
    return [{"inputText": text, **extra} for text in inputs]


def from_titan_embed(results: list[JSON], model: str, encoding_format: str | None) -> JSON:
    items = []
    tokens = 0
    for i, result in enumerate(results):
        vector = result.get("embedding")
        if not isinstance(vector, list):
            raise UpstreamUnavailable("Bedrock sent an embedding response without an embedding")
        embedding: Any = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        items.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens += int(result.get("inputTextTokenCount") or 0)
    return {
        "object": "list",
        "data": items,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

"""Pure translation between OpenAI's chat format and Ollama's native API. No I/O here."""

from __future__ import annotations

import base64
import secrets
import struct
import time
from typing import Any

import orjson

from switchboard.errors import InvalidRequest, UpstreamUnavailable
from switchboard.providers.base import JSON
from switchboard.providers.openai_shapes import chunk, completion, new_id, tool_call_input

_OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}


def to_ollama_chat(body: JSON, *, stream: bool) -> JSON:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Ollama models return one choice; n must be 1", param="n")
    out: JSON = {"model": body["model"], "messages": _messages(body["messages"]), "stream": stream}
    options = {dst: body[src] for src, dst in _OPTION_NAMES.items() if body.get(src) is not None}
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        out["options"] = options
    if body.get("tools"):
        out["tools"] = body["tools"]
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    return out


def _format(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


def _messages(messages: list[JSON]) -> list[JSON]:
    tool_names: dict[str, str] = {}
    out: list[JSON] = []
    for msg in messages:
        role = "system" if msg["role"] == "developer" else msg["role"]
        text, images = _content(msg.get("content"))
        item: JSON = {"role": role, "content": text}
        if images:
            item["images"] = images
        if msg.get("tool_calls"):
            item["tool_calls"] = [_tool_call_to_ollama(tc, tool_names) for tc in msg["tool_calls"]]
        if role == "tool":
            name = tool_names.get(msg.get("tool_call_id") or "") or msg.get("name")
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def _content(content: Any) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text", ""))
        elif kind == "image_url":
            url = part.get("image_url", {}).get("url", "")
            if not url.startswith("data:") or ";base64," not in url:
                raise InvalidRequest(
                    "Ollama models take images inline: send a data: URL with base64 content",
                    param="messages",
                )
            images.append(url.split(";base64,", 1)[1])
    return "".join(texts), images


def _tool_call_to_ollama(call: JSON, names: dict[str, str]) -> JSON:
    name, args = tool_call_input(call)
    if call.get("id"):
        names[call["id"]] = name
    return {"function": {"name": name, "arguments": args}}


def _tool_calls_to_openai(calls: list[JSON], first_index: int = 0) -> list[JSON]:
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        args = function.get("arguments", {})
        out.append(
            {
                "index": first_index + i,
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": args if isinstance(args, str) else orjson.dumps(args).decode(),
                },
            }
        )
    return out


def _usage(data: JSON) -> JSON:
    prompt = int(data.get("prompt_eval_count") or 0)
    completion = int(data.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(done_reason: Any, had_tool_calls: bool) -> str:
    if had_tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def from_ollama_chat(data: JSON, model: str) -> JSON:
    msg = data.get("message") or {}
    calls = _tool_calls_to_openai(msg.get("tool_calls") or [])
    for call in calls:
        del call["index"]
    message: JSON = {
        "role": "assistant",
        "content": msg.get("content") or ("" if not calls else None),
    }
    if msg.get("thinking"):
        message["reasoning_content"] = msg["thinking"]
    if calls:
        message["tool_calls"] = calls
    return completion(
        id=new_id(),
        model=model,
        message=message,
        finish_reason=_finish_reason(data.get("done_reason"), bool(calls)),
        usage=_usage(data),
    )


class OllamaStreamDecoder:
    """Turns Ollama's NDJSON stream lines into OpenAI chunks (stateful: one per stream)."""

    def __init__(self, model: str) -> None:
        self._id = new_id()
        self._created = int(time.time())
        self._model = model
        self._role_sent = False
        self._tool_calls = 0

    def _chunk(self, delta: JSON, finish_reason: str | None = None) -> JSON:
        return chunk(
            id=self._id,
            created=self._created,
            model=self._model,
            delta=delta,
            finish_reason=finish_reason,
        )

    def __call__(self, lines: list[bytes]) -> list[JSON]:
        chunks: list[JSON] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise UpstreamUnavailable("Ollama sent a malformed stream line") from exc
            if "error" in data:
                raise UpstreamUnavailable(f"Ollama error mid-stream: {data['error']}")
            self._decode(data, chunks)
        return chunks

    def _decode(self, data: JSON, chunks: list[JSON]) -> None:
        msg = data.get("message") or {}
        delta: JSON = {}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        if msg.get("content"):
            delta["content"] = msg["content"]
        if msg.get("thinking"):
            delta["reasoning_content"] = msg["thinking"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = _tool_calls_to_openai(msg["tool_calls"], self._tool_calls)
            self._tool_calls += len(msg["tool_calls"])
        if delta:
            chunks.append(self._chunk(delta))
        if data.get("done"):
            reason = _finish_reason(data.get("done_reason"), self._tool_calls > 0)
            chunks.append(self._chunk({}, reason))
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(data)
            chunks.append(usage_chunk)


def to_ollama_embed(body: JSON) -> JSON:
    inputs = body["input"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not all(isinstance(item, str) for item in inputs):
        raise InvalidRequest("Ollama embeds text only: input must be strings", param="input")
    out: JSON = {"model": body["model"], "input": inputs}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    return out


def from_ollama_embed(data: JSON, model: str, encoding_format: str | None) -> JSON:
    vectors = data.get("embeddings") or []
    items = []
    for i, vector in enumerate(vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        items.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = int(data.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": items,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

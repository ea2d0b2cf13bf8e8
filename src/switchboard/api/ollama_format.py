"""Pure translation for the inbound Ollama API: Ollama requests in, the gateway's OpenAI chat
format through the pipeline, Ollama responses out. No I/O here.

(`switchboard.providers.ollama_format` is the opposite direction: the gateway calling an Ollama
upstream.) Streams are rendered by `switchboard.api.ollama_stream`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from switchboard.api.openai_checks import check_chat, check_embeddings
from switchboard.errors import InvalidRequest, UpstreamUnavailable
from switchboard.providers.base import JSON

Shape = Literal["chat", "generate"]
LATEST = ":latest"
_ROLES = frozenset({"system", "user", "assistant", "tool"})
# Ollama option → OpenAI parameter; every other option (num_ctx, top_k, ...) has no OpenAI
# equivalent and is ignored, as an OpenAI-compatible server ignores unknown fields.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
# The first characters of the base64 of each image format's magic bytes.
_IMAGE_TYPES = (
    ("iVBORw0KGg", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


# -- model names -------------------------------------------------------------------------------


def has_tag(name: str) -> bool:
    """Ollama names are ``[host/][namespace/]model[:tag]``; the tag follows the last ``/``."""
    return ":" in name.rsplit("/", 1)[-1]


def tagged(name: str) -> str:
    """The name as Ollama lists it: with ``:latest`` when it has no tag."""
    return name if has_tag(name) else name + LATEST


def name_candidates(name: str) -> list[str]:
    """Catalog names a requested name may mean, best first: ``x`` and ``x:latest`` are one."""
    if name.endswith(LATEST):
        return [name, name.removesuffix(LATEST)]
    return [name] if has_tag(name) else [name, name + LATEST]


# -- timing ------------------------------------------------------------------------------------


def rfc3339(ns: int) -> str:
    """A UTC time as Go's RFC3339Nano renders it (Ollama's ``created_at``)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def created_at() -> str:
    return rfc3339(time.time_ns())


@dataclass(frozen=True, slots=True)
class Timing:
    """Ollama's durations, in nanoseconds, from what the gateway measured: the whole request,
    and the wait for the first token when it is known (streams). Nothing is loaded, so
    ``load_duration`` is 0; without a first token the whole time counts as evaluation."""

    total_ns: int
    prompt_eval_ns: int = 0

    @classmethod
    def between(cls, started: float, ended: float, first_token: float | None = None) -> Timing:
        """From `time.perf_counter` readings."""
        total = max(0, round((ended - started) * 1e9))
        first = 0 if first_token is None else round((first_token - started) * 1e9)
        return cls(total, min(max(0, first), total))

    def fields(self, prompt_tokens: int, eval_tokens: int) -> JSON:
        return {
            "total_duration": self.total_ns,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": eval_tokens,
            "eval_duration": self.total_ns - self.prompt_eval_ns,
        }


def done_reason(finish_reason: Any) -> str:
    """Ollama knows ``stop`` and ``length`` (a tool call also ends with ``stop``)."""
    return "length" if finish_reason == "length" else "stop"


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inbound:
    """One checked Ollama request. ``model`` is the name as the client wrote it (echoed back);
    ``body`` is the OpenAI request for the gateway, or None when Ollama would only load the
    model (empty messages or prompt) and answer at once with ``done_reason`` ``load_reason``."""

    model: str
    body: JSON | None
    stream: bool = False
    load_reason: str = "load"


def _need(ok: bool, message: str, param: str | None = None) -> None:
    if not ok:
        raise InvalidRequest(message, param=param)


def _model(body: Any) -> str:
    _need(isinstance(body, dict), "request body must be a JSON object")
    model = body.get("model")
    _need(isinstance(model, str) and bool(model), "model is required", "model")
    return str(model)


def _stream(body: JSON) -> bool:
    stream = body.get("stream", True)  # Ollama streams unless told not to
    _need(stream is None or isinstance(stream, bool), "stream must be true or false", "stream")
    return stream is not False


def _load_reason(body: JSON) -> str:
    return "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"


def _generation(body: JSON) -> JSON:
    """The parameters /api/chat and /api/generate share: options and format."""
    out: JSON = {}
    options = body.get("options")
    options = {} if options is None else options
    _need(isinstance(options, dict), "options must be an object", "options")
    for name, param in _OPTIONS.items():
        if options.get(name) is not None:
            out[param] = options[name]
    limit = options.get("num_predict")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        out["max_tokens"] = limit  # -1 (unlimited) and -2 (fill the context) mean "no limit"
    stop = options.get("stop")
    if stop:
        _need(isinstance(stop, str | list), "options.stop must be a list of strings", "stop")
        out["stop"] = [stop] if isinstance(stop, str) else stop
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt},
        }
    else:
        _need(fmt in (None, ""), 'format must be "json" or a JSON schema', "format")
    return out


def _image_url(image: Any) -> JSON:
    _need(isinstance(image, str) and bool(image), "images must be base64 strings", "images")
    if image.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": image}}
    mime = next((kind for sig, kind in _IMAGE_TYPES if image.startswith(sig)), "image/jpeg")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _user_content(text: str, images: Any) -> str | list[JSON]:
    if not images:
        return text
    _need(isinstance(images, list), "images must be a list of base64 strings", "images")
    parts: list[JSON] = [{"type": "text", "text": text}] if text else []
    return parts + [_image_url(image) for image in images]


def _arguments(name: str, raw: Any) -> str:
    if isinstance(raw, str):
        return raw or "{}"
    _need(isinstance(raw, dict), f"tool call {name!r}: arguments must be an object", "messages")
    return orjson.dumps(raw).decode()


class _ToolCalls:
    """Ollama's tool calls carry no ids and its tool results name the tool instead; OpenAI pairs
    them by id. Ids are made up for the calls of each assistant message, and each tool result
    takes the id of the first unanswered call of its tool (else the first unanswered call)."""

    def __init__(self) -> None:
        self._open: list[tuple[str, str]] = []

    def calls(self, calls: Any, i: int) -> list[JSON]:
        _need(isinstance(calls, list), "tool_calls must be a list", f"messages[{i}].tool_calls")
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            ok = isinstance(function, dict) and isinstance(function.get("name"), str)
            _need(ok, "each tool call needs a function name", f"messages[{i}].tool_calls")
        out: list[JSON] = []
        self._open = []
        for call in calls:
            name = call["function"]["name"]
            call_id = call.get("id")  # newer Ollama clients keep the id of a call
            if not (isinstance(call_id, str) and call_id):
                call_id = f"call_{secrets.token_hex(12)}"
            arguments = _arguments(name, call["function"].get("arguments"))
            out.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
            self._open.append((call_id, name))
        return out

    def answer(self, tool_name: Any, call_id: Any) -> str:
        """The id of the call a tool result answers (its own ``tool_call_id`` if it has one)."""
        for i, (open_id, name) in enumerate(self._open):
            if open_id == call_id or (not isinstance(call_id, str) and name == tool_name):
                return self._open.pop(i)[0]
        if isinstance(call_id, str) and call_id:
            return call_id
        return self._open.pop(0)[0] if self._open else f"call_{secrets.token_hex(12)}"


def _messages(messages: list[Any]) -> list[JSON]:
    tools = _ToolCalls()
    out: list[JSON] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        _need(isinstance(msg, dict), "each message must be an object", param)
        role = msg.get("role")
        _need(role in _ROLES, f"role must be one of {', '.join(sorted(_ROLES))}", f"{param}.role")
        content = msg.get("content") or ""
        _need(isinstance(content, str), "content must be a string", f"{param}.content")
        images = msg.get("images")
        _need(not images or role == "user", "only user messages may carry images", param)
        item: JSON = {"role": role, "content": _user_content(content, images)}
        if role == "assistant" and msg.get("tool_calls"):
            item["tool_calls"] = tools.calls(msg["tool_calls"], i)
            item["content"] = content or None
        if role == "tool":
            item["tool_call_id"] = tools.answer(msg.get("tool_name"), msg.get("tool_call_id"))
        out.append(item)
    return out


def chat_request(body: Any) -> Inbound:
    """An Ollama ``/api/chat`` request; ``think``, ``keep_alive`` and ``options`` the OpenAI
    format has no place for are ignored."""
    model = _model(body)
    stream = _stream(body)
    messages = body.get("messages") or []
    _need(isinstance(messages, list), "messages must be a list of messages", "messages")
    if not messages:
        return Inbound(model, None, stream, _load_reason(body))
    out: JSON = {"model": model, "messages": _messages(messages), **_generation(body)}
    tools = body.get("tools")
    _need(tools is None or isinstance(tools, list), "tools must be a list", "tools")
    if tools:
        out["tools"] = [{"type": "function", **t} if isinstance(t, dict) else t for t in tools]
    check_chat(out)
    return Inbound(model, out, stream)


def generate_request(body: Any) -> Inbound:
    """An Ollama ``/api/generate`` request as a chat: ``system`` and ``prompt`` (with its
    ``images``) become a system and a user message. Raw prompts, fill-in-the-middle
    (``suffix``), template overrides and ``context`` need a raw completion API that chat
    models do not have, so they are refused rather than silently ignored."""
    model = _model(body)
    stream = _stream(body)
    _need(not body.get("raw"), "raw prompts are not supported: send the prompt without raw")
    _need(not body.get("suffix"), "suffix (fill-in-the-middle) is not supported", "suffix")
    _need(not body.get("template"), "template overrides are not supported", "template")
    _need(not body.get("context"), "context is not supported: use /api/chat for history")
    prompt = body.get("prompt") or ""
    system = body.get("system") or ""
    _need(isinstance(prompt, str), "prompt must be a string", "prompt")
    _need(isinstance(system, str), "system must be a string", "system")
    images = body.get("images")
    if not prompt and not images:
        return Inbound(model, None, stream, _load_reason(body))
    messages: list[JSON] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": _user_content(prompt, images)})
    out: JSON = {"model": model, "messages": messages, **_generation(body)}
    check_chat(out)
    return Inbound(model, out, stream)


def embed_request(body: Any) -> Inbound:
    """``/api/embed``: ``input`` is a string or a list of strings; ``truncate`` is ignored."""
    model = _model(body)
    texts = body.get("input")
    ok = isinstance(texts, str) or (
        isinstance(texts, list) and all(isinstance(t, str) for t in texts)
    )
    _need(ok, "input must be a string or a list of strings", "input")
    out: JSON = {"model": model, "input": texts}
    dims = body.get("dimensions")
    if dims is not None:
        _need(isinstance(dims, int) and dims > 0, "dimensions must be a positive integer")
        out["dimensions"] = dims
    check_embeddings(out)
    return Inbound(model, out)


def embeddings_request(body: Any) -> Inbound:
    """Legacy ``/api/embeddings``: one ``prompt``; an empty one only loads the model."""
    model = _model(body)
    prompt = body.get("prompt") or ""
    _need(isinstance(prompt, str), "prompt must be a string", "prompt")
    return Inbound(model, {"model": model, "input": prompt} if prompt else None)


# -- responses ---------------------------------------------------------------------------------


def tool_arguments(name: str, raw: Any) -> JSON:
    """OpenAI's JSON-string arguments as the object Ollama sends; 502 when they are not one."""
    try:
        args = raw if isinstance(raw, dict) else orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise UpstreamUnavailable(
            f"the model called tool {name!r} with arguments that are not a JSON object"
        )
    return args


def tool_call(name: str, arguments: JSON) -> JSON:
    return {"function": {"name": name, "arguments": arguments}}


def _message(message: JSON) -> JSON:
    content = message.get("content")
    out: JSON = {"role": "assistant", "content": content if isinstance(content, str) else ""}
    thinking = message.get("reasoning_content")
    if thinking:
        out["thinking"] = thinking
    calls = message.get("tool_calls") or []
    if calls:
        functions = [call.get("function") or {} for call in calls]
        out["tool_calls"] = [
            tool_call(f.get("name", ""), tool_arguments(f.get("name", ""), f.get("arguments")))
            for f in functions
        ]
    return out


def _counts(result: JSON) -> tuple[int, int]:
    usage = result.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def chat_response(result: JSON, model: str, timing: Timing) -> JSON:
    """An OpenAI ``chat.completion`` as Ollama's non-streamed ``/api/chat`` answer."""
    choice = (result.get("choices") or [{}])[0]
    return {
        "model": model,
        "created_at": created_at(),
        "message": _message(choice.get("message") or {}),
        "done_reason": done_reason(choice.get("finish_reason")),
        "done": True,
        **timing.fields(*_counts(result)),
    }


def generate_response(result: JSON, model: str, timing: Timing) -> JSON:
    """An OpenAI ``chat.completion`` as Ollama's non-streamed ``/api/generate`` answer."""
    choice = (result.get("choices") or [{}])[0]
    message = _message(choice.get("message") or {})
    out: JSON = {"model": model, "created_at": created_at(), "response": message["content"]}
    if "thinking" in message:
        out["thinking"] = message["thinking"]
    out |= {"done": True, "done_reason": done_reason(choice.get("finish_reason"))}
    return out | timing.fields(*_counts(result))


def load_response(model: str, shape: Shape, reason: str) -> JSON:
    """What Ollama answers a request with nothing to generate: the model is (un)loaded."""
    out: JSON = {"model": model, "created_at": created_at()}
    if shape == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return out | {"done_reason": reason, "done": True}


def _vectors(result: JSON) -> list[Any]:
    data = sorted(result.get("data") or [], key=lambda item: item.get("index", 0))
    return [item.get("embedding") for item in data]


def embed_response(result: JSON, model: str, timing: Timing) -> JSON:
    """An OpenAI embeddings list as Ollama's ``/api/embed`` answer."""
    tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
    return {
        "model": model,
        "embeddings": _vectors(result),
        "total_duration": timing.total_ns,
        "load_duration": 0,
        "prompt_eval_count": tokens,
    }


def embeddings_response(result: JSON | None) -> JSON:
    """Legacy ``/api/embeddings``: ``{"embedding": [...]}`` (empty for a load request)."""
    vectors = _vectors(result) if result is not None else []
    return {"embedding": vectors[0] if vectors else []}

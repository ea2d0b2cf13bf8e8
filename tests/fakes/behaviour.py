"""Deterministic upstream behaviour shared by the OpenAI and Ollama fakes.

Trigger models (matched against the whole upstream ``model`` string):

* ``error-<code>`` - reply with HTTP ``<code>`` and the protocol's error body
  (``Retry-After: 1`` is added for 429).
* ``slow-<ms>``    - wait ``<ms>`` milliseconds before the response / first chunk.
* ``stall``        - stream: first content chunk, then a 30 s pause, then the rest;
  non-stream: a 30 s pause.  Pauses end early when the client disconnects.
* ``cut-<n>``      - stream: ``n`` content chunks, then the connection is dropped
  (no final chunk, no ``[DONE]`` / ``done: true``).
* ``leak``         - (OpenAI fake) answer :data:`LEAK_TEXT`, personal data the prompt never
  had, for tests of guardrails on answers.

Any other model replies normally:

* last message has role ``tool``      -> ``"Tool result: <its content>"``;
* request has ``tools`` and the last
  message is from the user            -> a call of the first tool with
  :data:`TOOL_ARGUMENTS`;
* otherwise                           -> ``"Echo: <last user message text>"``.

Prompt tokens are the whitespace-separated words of all message texts (min 1);
completion tokens are the words of the reply (a tool call counts
:data:`TOOL_CALL_TOKENS`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request

STALL_SECONDS = 30.0
TOOL_ARGUMENTS: dict[str, str] = {"location": "Paris"}
TOOL_CALL_TOKENS = 5
EMBEDDING_DIMS = 8
LEAK_TEXT = (
    "Sure. Write to jane.doe@example.com or pay with 4111 1111 1111 1111; "
    "IBAN DE89 3704 0044 0532 0130 00. Thanks!"
)

_ERROR = re.compile(r"error-(\d{3})")
_SLOW = re.compile(r"slow-(\d+)")
_CUT = re.compile(r"cut-(\d+)")
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
_PAUSE_STEP = 0.05


@dataclass(frozen=True)
class Trigger:
    """What a model name asks the fake to do besides answering."""

    error_status: int | None = None
    delay: float = 0.0
    stall: bool = False
    cut_after: int | None = None

    @property
    def response_delay(self) -> float:
        """Seconds to wait before a non-streamed response."""
        return self.delay + (STALL_SECONDS if self.stall else 0.0)


def parse_trigger(model: str) -> Trigger:
    if match := _ERROR.fullmatch(model):
        return Trigger(error_status=int(match[1]))
    if match := _SLOW.fullmatch(model):
        return Trigger(delay=int(match[1]) / 1000)
    if model == "stall":
        return Trigger(stall=True)
    if match := _CUT.fullmatch(model):
        return Trigger(cut_after=int(match[1]))
    return Trigger()


def error_message(status: int) -> str:
    return f"Simulated upstream error (HTTP {status})."


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, str] = field(default_factory=lambda: dict(TOOL_ARGUMENTS))


@dataclass(frozen=True)
class Reply:
    """The assistant turn the fake produces: text, or one tool call."""

    text: str
    tool_call: ToolCall | None
    prompt_tokens: int
    completion_tokens: int

    @property
    def pieces(self) -> list[str]:
        """One word per piece; ``"".join(pieces) == text``."""
        return split_words(self.text)


def split_words(text: str) -> list[str]:
    return _WORD_BOUNDARY.split(text)


def count_words(text: str) -> int:
    return len(text.split())


def content_text(content: object) -> str:
    """Text of a message ``content``: a string or a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def _prompt_tokens(dicts: Sequence[Mapping[str, Any]]) -> int:
    return max(1, sum(count_words(content_text(m.get("content"))) for m in dicts))


def leak_reply(messages: Sequence[Any]) -> Reply:
    dicts = [m for m in messages if isinstance(m, Mapping)]
    return Reply(LEAK_TEXT, None, _prompt_tokens(dicts), count_words(LEAK_TEXT))


def build_reply(messages: Sequence[Any], tools: object = None) -> Reply:
    dicts = [m for m in messages if isinstance(m, Mapping)]
    prompt_tokens = _prompt_tokens(dicts)
    last = dicts[-1] if dicts else {}
    tool_name = _first_tool_name(tools)
    if last.get("role") == "tool":
        text = f"Tool result: {content_text(last.get('content'))}"
    elif tool_name is not None and last.get("role") == "user":
        return Reply("", ToolCall(tool_name), prompt_tokens, TOOL_CALL_TOKENS)
    else:
        users = [m for m in dicts if m.get("role") == "user"]
        text = f"Echo: {content_text(users[-1].get('content')) if users else ''}"
    return Reply(text, None, prompt_tokens, count_words(text))


def _first_tool_name(tools: object) -> str | None:
    if not isinstance(tools, Sequence) or isinstance(tools, str) or not tools:
        return None
    function = tools[0].get("function") if isinstance(tools[0], Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else "tool"


def embedding_vector(text: str, dims: int = EMBEDDING_DIMS) -> list[float]:
    """Unit-length vector derived from a hash of ``text``; values are exact float32."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dims:
        digest += hashlib.sha256(digest).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [_float32(x / norm) for x in raw]


def embedding_dims(requested: object) -> int:
    """The ``dimensions`` request field if it is a positive int, else the default."""
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        return requested
    return EMBEDDING_DIMS


def embedding_base64(vector: Sequence[float]) -> str:
    """Little-endian float32 array, base64-encoded (OpenAI ``encoding_format=base64``)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; ``body`` is the parsed JSON or None."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


async def record_request(request: Request) -> RecordedRequest:
    """Read, parse and append the request to ``app.state.requests``."""
    raw = await request.body()
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    recorded = RecordedRequest(
        method=request.method,
        path=request.url.path,
        headers=dict(request.headers),
        body=body,
        raw=raw,
    )
    request.app.state.requests.append(recorded)
    return recorded


async def pause(seconds: float, request: Request | None = None) -> None:
    """Sleep ``seconds``; return early once ``request``'s client has disconnected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while (remaining := deadline - loop.time()) > 0:
            if request is not None and await request.is_disconnected():
                request.app.state.disconnects += 1  # lets tests see the gateway hang up
                return
            await asyncio.sleep(min(remaining, _PAUSE_STEP))
    except asyncio.CancelledError:
        # Inside a streaming response Starlette cancels the body when the client goes away.
        if request is not None:
            request.app.state.disconnects += 1
        raise

"""One adapter suite, run over every provider adapter against its protocol-faithful fake.

Each case below runs once per adapter (ids ``openai``, ``ollama``, ``anthropic``,
``bedrock``): the adapter is built with `build_provider` from a `ProviderConfig` and driven
through the `Provider` protocol alone, with an OpenAI request body whose ``model`` is the
upstream's own id. The fakes (:mod:`fakes.behaviour`) answer alike whatever their wire
protocol, so the expected replies and token counts are the same for every adapter; where the
protocols genuinely differ (how an image or a tool result travels, whether a 429 carries
``Retry-After``) the difference is spelled out in a per-adapter table, never skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from conftest import BEDROCK_REGION
from conftest import WEATHER_TOOLS as TOOLS
from fakes import anthropic_upstream, bedrock_upstream, ollama_upstream, openai_upstream
from fakes.behaviour import TOOL_ARGUMENTS, TOOL_CALL_TOKENS, error_message
from fakes.server import ServerThread
from switchboard.config import ProviderConfig, ProviderKind
from switchboard.errors import (
    InvalidRequest,
    RateLimited,
    SwitchboardError,
    UpstreamOverloaded,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard.providers import ChunkStream, Provider, build_provider

pytestmark = pytest.mark.slow

JSON = dict[str, Any]

LIMIT = 10.0  # seconds any one test may take; every case finishes well inside it
IMPATIENT = 0.3  # read_timeout of the provider the timeout cases use
DISCONNECT_WAIT = 2.0  # how soon a fake must see the adapter hang up

# --- the conversation every adapter is given, and what the fakes answer ---------------------

SYSTEM = "You are a test."
USER = "hello from the suite"
BODY_MESSAGES: list[JSON] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
]
REPLY = f"Echo: {USER}"
REPLY_PIECES = ["Echo: ", "hello ", "from ", "the ", "suite"]  # one word per stream chunk
# The fakes count whitespace-separated words: of every message text for the prompt, of the
# reply for the completion.
PROMPT_TOKENS = 8  # "You are a test." (4) + "hello from the suite" (4)
COMPLETION_TOKENS = 5  # "Echo: hello from the suite"

TOOL_QUESTION = "What is the weather in Paris?"
TOOL_ANSWER = "Sunny and 21 degrees"

# A 1x1 PNG.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
IMAGE_TEXT = "describe this picture"
IMAGE_PARTS: list[JSON] = [
    {"type": "text", "text": IMAGE_TEXT},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}},
]


# --- the adapters under test ----------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How to reach one adapter's fake, and what its protocol does differently."""

    kind: ProviderKind
    fixture: str  # the session fixture in conftest serving the fake
    model: str  # an upstream model id the fake accepts
    url_suffix: str = ""
    api_key: str | None = None
    region: str | None = None
    models_path: str = ""  # where the fake lists its models
    listed: tuple[str, ...] = ()  # the ids it lists there
    retry_after: float | None = None  # what the adapter reads from a 429


SPECS: dict[str, Spec] = {
    "openai": Spec(
        kind="openai",
        fixture="fake_openai",
        model="gpt-4o-mini",
        url_suffix="/v1",
        api_key="sk-upstream-secret",
        models_path="/v1/models",
        listed=tuple(openai_upstream.MODELS),
        retry_after=1.0,
    ),
    "ollama": Spec(
        kind="ollama",
        fixture="fake_ollama",
        model="llama3.2:latest",
        models_path="/api/tags",
        listed=tuple(m["name"] for m in ollama_upstream.MODELS),
        retry_after=1.0,
    ),
    "anthropic": Spec(
        kind="anthropic",
        fixture="fake_anthropic",
        model="claude-haiku-4-5-20251001",
        api_key="sk-ant-upstream-secret",
        models_path="/v1/models",
        listed=tuple(model_id for model_id, _ in anthropic_upstream.MODELS),
        retry_after=1.0,
    ),
    "bedrock": Spec(
        kind="bedrock",
        fixture="fake_bedrock",
        model="anthropic.claude-3-5-sonnet-20240620-v1:0",
        region=BEDROCK_REGION,
        models_path="/foundation-models",
        listed=tuple(bedrock_upstream.FOUNDATION_MODELS),
        # ThrottlingException comes with x-amzn-ErrorType and no Retry-After header.
        retry_after=None,
    ),
}


@dataclass(frozen=True)
class Upstream:
    """One adapter kind and the running fake it talks to."""

    spec: Spec
    fake: ServerThread

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def state(self) -> Any:
        return self.fake.app.state

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "name": f"{self.kind}-suite",
            "kind": self.kind,
            "base_url": self.fake.url + self.spec.url_suffix,
            "locality": "external",
            "api_key": self.spec.api_key,
            "region": self.spec.region,
            **overrides,
        }
        return build_provider(ProviderConfig(**values))

    def body(self, messages: list[JSON], model: str | None = None, **extra: Any) -> JSON:
        return {"model": model or self.spec.model, "messages": messages, **extra}

    def last_request(self) -> Any:
        return self.state.requests[-1]


@pytest.fixture(params=list(SPECS))
def upstream(request: pytest.FixtureRequest) -> Upstream:
    spec = SPECS[request.param]
    fake: ServerThread = request.getfixturevalue(spec.fixture)
    return Upstream(spec, fake)


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[Provider]:
    built = upstream.build()
    yield built
    await built.aclose()


@pytest.fixture
async def impatient(upstream: Upstream) -> AsyncIterator[Provider]:
    """The same adapter with a short read timeout."""
    built = upstream.build(read_timeout=IMPATIENT)
    yield built
    await built.aclose()


# --- helpers ----------------------------------------------------------------------------------


def bounded() -> asyncio.Timeout:
    return asyncio.timeout(LIMIT)


async def collect(stream: ChunkStream, into: list[JSON] | None = None) -> list[JSON]:
    """Every chunk of ``stream`` (also into ``into`` as they come); the stream is closed after,
    whether it ended or raised. Each batch must be a non-empty list of chunk dicts."""
    chunks: list[JSON] = [] if into is None else into
    try:
        async for batch in stream:
            assert isinstance(batch, list)
            assert batch
            assert all(isinstance(c, dict) for c in batch)
            chunks.extend(batch)
    finally:
        await asyncio.wait_for(stream.aclose(), DISCONNECT_WAIT)
    return chunks


def delta(chunk: JSON) -> JSON:
    choices = chunk.get("choices") or []
    return (choices[0].get("delta") or {}) if choices else {}


def text_of(chunks: list[JSON]) -> str:
    return "".join(delta(c).get("content") or "" for c in chunks)


def content_deltas(chunks: list[JSON]) -> list[str]:
    return [delta(c)["content"] for c in chunks if delta(c).get("content")]


def finish_reasons(chunks: list[JSON]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c.get("choices") and c["choices"][0].get("finish_reason")
    ]


def usage_of(usage: JSON) -> tuple[int, int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def assert_stream_envelope(chunks: list[JSON], finish: str) -> JSON:
    """The shape every adapter's stream shares; returns the usage of its final chunk."""
    assert chunks
    assert all(c.get("object") == "chat.completion.chunk" for c in chunks[:-1])
    assert finish_reasons(chunks) == [finish]
    # Exactly one usage chunk, and it ends the stream.
    usage_chunks = [c for c in chunks if c.get("choices") == []]
    assert len(usage_chunks) == 1
    last = chunks[-1]
    assert last["choices"] == []
    # The first chunk that carries anything is preceded or accompanied by the role.
    first = next(
        i for i, c in enumerate(chunks) if delta(c).get("content") or delta(c).get("tool_calls")
    )
    assert any(delta(c).get("role") == "assistant" for c in chunks[: first + 1])
    assert all(delta(c).get("role") in (None, "assistant") for c in chunks)
    usage: JSON = last["usage"]
    return usage


def assembled_tool_calls(chunks: list[JSON]) -> dict[int, JSON]:
    """Tool-call deltas put together by index, as an OpenAI client does."""
    calls: dict[int, JSON] = {}
    for chunk in chunks:
        for part in delta(chunk).get("tool_calls") or []:
            call = calls.setdefault(
                part["index"], {"id": "", "type": "", "name": "", "arguments": ""}
            )
            call["id"] = part.get("id") or call["id"]
            call["type"] = part.get("type") or call["type"]
            function = part.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""
    return calls


async def wait_for_disconnect(upstream: Upstream, before: int) -> None:
    """Until the fake has counted one more client hang-up than ``before``."""
    deadline = time.monotonic() + DISCONNECT_WAIT
    while upstream.state.disconnects == before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert upstream.state.disconnects == before + 1, f"{upstream.kind} upstream was not released"


# --- 1. text ----------------------------------------------------------------------------------


async def test_text(upstream: Upstream, provider: Provider) -> None:
    async with bounded():
        reply = await provider.chat(upstream.body(BODY_MESSAGES))
    assert reply["object"] == "chat.completion"
    assert reply["model"] == upstream.spec.model
    assert reply["id"]
    [choice] = reply["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == REPLY
    assert not choice["message"].get("tool_calls")


# --- 2. stream --------------------------------------------------------------------------------


async def test_stream(upstream: Upstream, provider: Provider) -> None:
    async with bounded():
        chunks = await collect(await provider.stream_chat(upstream.body(BODY_MESSAGES)))
    usage = assert_stream_envelope(chunks, "stop")
    assert text_of(chunks) == REPLY
    assert content_deltas(chunks) == REPLY_PIECES
    assert usage_of(usage) == (PROMPT_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS + COMPLETION_TOKENS)
    assert not assembled_tool_calls(chunks)


# --- 3. usage ---------------------------------------------------------------------------------


async def test_usage(upstream: Upstream, provider: Provider) -> None:
    async with bounded():
        reply = await provider.chat(upstream.body(BODY_MESSAGES))
    assert usage_of(reply["usage"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        PROMPT_TOKENS + COMPLETION_TOKENS,
    )


# --- 4. tools round trip ----------------------------------------------------------------------

# How each protocol ties a tool result to the call it answers: (the value the fake received
# for the result, which field of the call it must equal).
ToolLink = Callable[[Any], Any]


def _openai_link(body: Any) -> Any:
    return body["messages"][-1]["tool_call_id"]


def _ollama_link(body: Any) -> Any:
    return body["messages"][-1]["tool_name"]  # Ollama's tool results name the tool, not a call


def _anthropic_link(body: Any) -> Any:
    [block] = body["messages"][-1]["content"]
    assert block["type"] == "tool_result"
    return block["tool_use_id"]


def _bedrock_link(body: Any) -> Any:
    [block] = body["messages"][-1]["content"]
    return block["toolResult"]["toolUseId"]


TOOL_LINKS: dict[str, tuple[ToolLink, str]] = {
    "openai": (_openai_link, "id"),
    "ollama": (_ollama_link, "name"),
    "anthropic": (_anthropic_link, "id"),
    "bedrock": (_bedrock_link, "id"),
}


async def test_tools_round_trip(upstream: Upstream, provider: Provider) -> None:
    question: JSON = {"role": "user", "content": TOOL_QUESTION}
    async with bounded():
        first = await provider.chat(upstream.body([question], tools=TOOLS))
    [choice] = first["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant"
    assert not choice["message"].get("content")
    [call] = choice["message"]["tool_calls"]
    assert isinstance(call["id"], str)
    assert call["id"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert orjson.loads(call["function"]["arguments"]) == TOOL_ARGUMENTS
    assert first["usage"]["completion_tokens"] == TOOL_CALL_TOKENS

    conversation = [
        question,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": TOOL_ANSWER},
    ]
    async with bounded():
        second = await provider.chat(upstream.body(conversation, tools=TOOLS))
    [choice] = second["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == f"Tool result: {TOOL_ANSWER}"
    link, field = TOOL_LINKS[upstream.kind]
    expected = call["id"] if field == "id" else call["function"]["name"]
    assert link(upstream.last_request().body) == expected


async def test_tool_call_streamed(upstream: Upstream, provider: Provider) -> None:
    body = upstream.body([{"role": "user", "content": TOOL_QUESTION}], tools=TOOLS)
    async with bounded():
        chunks = await collect(await provider.stream_chat(body))
    usage = assert_stream_envelope(chunks, "tool_calls")
    assert text_of(chunks) == ""
    calls = assembled_tool_calls(chunks)
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"]
    assert call["type"] == "function"
    assert call["name"] == "get_weather"
    assert orjson.loads(call["arguments"]) == TOOL_ARGUMENTS
    assert usage["completion_tokens"] == TOOL_CALL_TOKENS


# --- 5. images --------------------------------------------------------------------------------

# The user turn each fake received for IMAGE_PARTS: the image in its protocol's own shape.
IMAGE_TURNS: dict[str, JSON] = {
    "openai": {"role": "user", "content": IMAGE_PARTS},
    "ollama": {"role": "user", "content": IMAGE_TEXT, "images": [PNG_BASE64]},
    "anthropic": {
        "role": "user",
        "content": [
            {"type": "text", "text": IMAGE_TEXT},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64},
            },
        ],
    },
    "bedrock": {
        "role": "user",
        "content": [
            {"text": IMAGE_TEXT},
            {"image": {"format": "png", "source": {"bytes": PNG_BASE64}}},
        ],
    },
}


async def test_image(upstream: Upstream, provider: Provider) -> None:
    async with bounded():
        reply = await provider.chat(upstream.body([{"role": "user", "content": IMAGE_PARTS}]))
    assert reply["choices"][0]["message"]["content"] == f"Echo: {IMAGE_TEXT}"
    assert reply["choices"][0]["finish_reason"] == "stop"
    sent = upstream.last_request().body
    assert sent["messages"] == [IMAGE_TURNS[upstream.kind]]


# --- 6. errors --------------------------------------------------------------------------------

ERRORS: list[tuple[int, type[SwitchboardError], int]] = [
    (500, UpstreamUnavailable, 502),
    (503, UpstreamOverloaded, 503),
    (429, RateLimited, 429),
    (400, InvalidRequest, 400),
]


@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("status", "error", "gateway_status"), ERRORS, ids=[str(s) for s, _, _ in ERRORS]
)
async def test_error_statuses(
    upstream: Upstream,
    provider: Provider,
    status: int,
    error: type[SwitchboardError],
    gateway_status: int,
    streamed: bool,
) -> None:
    """Each protocol's own error shape maps to the same class; its message comes through."""
    body = upstream.body([{"role": "user", "content": "fail please"}], model=f"error-{status}")
    # stream_chat must raise before it returns a stream: the status arrives before any chunk.
    send: Callable[[JSON], Awaitable[object]] = provider.stream_chat if streamed else provider.chat
    async with bounded():
        with pytest.raises(SwitchboardError) as raised:
            await send(body)
    assert type(raised.value) is error
    assert raised.value.status_code == gateway_status
    assert error_message(status) in raised.value.message
    if isinstance(raised.value, RateLimited):
        assert raised.value.retry_after == upstream.spec.retry_after


# --- 7. timeouts ------------------------------------------------------------------------------


async def test_read_timeout(upstream: Upstream, impatient: Provider) -> None:
    disconnects = upstream.state.disconnects
    started = time.monotonic()
    async with bounded():
        with pytest.raises(UpstreamTimeout) as raised:
            await impatient.chat(upstream.body(BODY_MESSAGES, model="slow-2000"))
    assert time.monotonic() - started < 1.5
    assert raised.value.status_code == 504
    # The adapter hung up rather than leaving the upstream to finish for nobody.
    await wait_for_disconnect(upstream, disconnects)


async def test_stalled_stream_times_out(upstream: Upstream, impatient: Provider) -> None:
    disconnects = upstream.state.disconnects
    received: list[JSON] = []
    async with bounded():
        stream = await impatient.stream_chat(upstream.body(BODY_MESSAGES, model="stall"))
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await collect(stream, received)
    assert time.monotonic() - started < 1.5
    # The first word came through before the upstream went quiet; nothing after it.
    assert content_deltas(received) == REPLY_PIECES[:1]
    assert finish_reasons(received) == []
    await wait_for_disconnect(upstream, disconnects)


async def test_cut_stream_is_unavailable(upstream: Upstream, provider: Provider) -> None:
    received: list[JSON] = []
    async with bounded():
        stream = await provider.stream_chat(upstream.body(BODY_MESSAGES, model="cut-3"))
        with pytest.raises(UpstreamUnavailable):
            await collect(stream, received)
    assert content_deltas(received) == REPLY_PIECES[:3]
    assert finish_reasons(received) == []
    assert not any(c.get("choices") == [] for c in received)


# --- 8. closing a stream early ----------------------------------------------------------------


async def test_aclose_releases_a_partly_read_stream(upstream: Upstream, provider: Provider) -> None:
    disconnects = upstream.state.disconnects
    received: list[JSON] = []
    async with bounded():
        stream = await provider.stream_chat(upstream.body(BODY_MESSAGES, model="stall"))
        try:
            async for batch in stream:
                received.extend(batch)
                if content_deltas(received):
                    break
        finally:
            await asyncio.wait_for(stream.aclose(), DISCONNECT_WAIT)
        assert content_deltas(received) == REPLY_PIECES[:1]
        await wait_for_disconnect(upstream, disconnects)
        # The provider is still usable after dropping that connection.
        reply = await provider.chat(upstream.body(BODY_MESSAGES))
    assert reply["choices"][0]["message"]["content"] == REPLY


# --- 9. list_models ---------------------------------------------------------------------------


async def test_list_models(upstream: Upstream, provider: Provider) -> None:
    async with bounded():
        models = await provider.list_models()
    assert models
    assert all(isinstance(m, str) for m in models)
    assert models == list(upstream.spec.listed)
    assert upstream.last_request().path == upstream.spec.models_path

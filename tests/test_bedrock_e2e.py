"""Bedrock end to end: the official `openai` SDK against the gateway, which reaches the fake
Bedrock over SigV4 (the fake verifies every signature), on SQLite and on PostgreSQL; then the
adapter alone against the fake for what the gateway cannot show: credentials, refresh, stream
failures, timeouts, disconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from botocore.credentials import RefreshableCredentials

from conftest import BEDROCK_ACCESS_KEY, BEDROCK_REGION, BEDROCK_SECRET_KEY, RunningGateway
from conftest import WEATHER_TOOLS as TOOLS
from fakes import bedrock_upstream
from fakes.server import ServerThread
from switchboard.config import ProviderConfig
from switchboard.errors import (
    ConfigError,
    InvalidRequest,
    RateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard.providers import ChunkStream, bedrock
from switchboard.providers.bedrock import BedrockProvider

pytestmark = pytest.mark.slow

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
CHAT_MODELS = ["bedrock-claude", "bedrock-profile"]

_clients: list[openai.OpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(gateway: RunningGateway, key: str) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)
    _clients.append(sdk)
    return sdk


@pytest.fixture(scope="module")
def hybrid(gateway: RunningGateway) -> openai.OpenAI:
    return client(gateway, gateway.new_tenant("bedrock-user"))


# --- through the gateway ------------------------------------------------------------------


def test_chat_is_translated_and_signed(hybrid: openai.OpenAI, fake_bedrock: ServerThread) -> None:
    requests = fake_bedrock.app.state.requests
    before = len(requests)
    reply = hybrid.chat.completions.create(
        model="bedrock-claude",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        max_tokens=50,
        temperature=0.2,
        stop=["END"],
    )
    assert reply.model == "bedrock-claude"
    assert reply.choices[0].message.content == "Echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 3)
    sent = requests[before]
    assert sent.path == f"/model/{CLAUDE}/converse"
    assert sent.body == {
        "messages": [{"role": "user", "content": [{"text": "hello there"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]},
    }
    scope = f"Credential={BEDROCK_ACCESS_KEY}/"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 {scope}")
    assert f"/{BEDROCK_REGION}/bedrock/aws4_request" in sent.headers["authorization"]


def test_inference_profile_model_id(hybrid: openai.OpenAI, fake_bedrock: ServerThread) -> None:
    requests = fake_bedrock.app.state.requests
    before = len(requests)
    reply = hybrid.chat.completions.create(
        model="bedrock-profile", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Echo: hi"
    assert requests[before].path == f"/model/{PROFILE}/converse"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_with_usage(hybrid: openai.OpenAI, model: str) -> None:
    chunks = list(
        hybrid.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "count the words here"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: count the words here"
    assert all(c.model == model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 5)


def test_stream_without_usage(hybrid: openai.OpenAI) -> None:
    chunks = list(
        hybrid.chat.completions.create(
            model="bedrock-claude", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hi"


def test_tool_call_round_trip(hybrid: openai.OpenAI, fake_bedrock: ServerThread) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = hybrid.chat.completions.create(model="bedrock-claude", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("tooluse_")
    assert call.function.name == "get_weather"
    assert call.function.arguments.replace(" ", "") == '{"location":"Paris"}'
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    requests = fake_bedrock.app.state.requests
    before = len(requests)
    second = hybrid.chat.completions.create(model="bedrock-claude", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Tool result: sunny, 21C"
    result = requests[before].body["messages"][-1]
    assert result == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny, 21C"}]}}],
    }


def test_streamed_tool_call(hybrid: openai.OpenAI) -> None:
    stream = hybrid.chat.completions.create(
        model="bedrock-profile",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=TOOLS,
        stream=True,
    )
    name, arguments, finish, ids = "", "", None, set()
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                ids.add(call.id)
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert arguments.replace(" ", "") == '{"location":"Paris"}'
    assert finish == "tool_calls"
    assert len(ids - {None}) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_throttling_is_a_rate_limit_error(hybrid: openai.OpenAI, stream: bool) -> None:
    # Two throttled requests per gateway at most: with the router's retries, a third would
    # find the deployment's circuit breaker open.
    with pytest.raises(openai.RateLimitError) as err:
        hybrid.chat.completions.create(
            model="bedrock-throttled", messages=[{"role": "user", "content": "x"}], stream=stream
        )
    assert err.value.status_code == 429
    assert BEDROCK_SECRET_KEY not in err.value.response.text


@pytest.mark.parametrize("encoding", ["float", None])
def test_titan_embeddings(
    hybrid: openai.OpenAI, fake_bedrock: ServerThread, encoding: str | None
) -> None:
    requests = fake_bedrock.app.state.requests
    before = len(requests)
    kwargs: dict[str, Any] = {"encoding_format": encoding} if encoding else {}
    result = hybrid.embeddings.create(model="titan-embed", input=["alpha", "beta gamma"], **kwargs)
    assert result.model == "titan-embed"
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 3
    sent = sorted(r.body["inputText"] for r in requests[before:])
    assert sent == ["alpha", "beta gamma"]
    assert {r.path for r in requests[before:]} == {"/model/amazon.titan-embed-text-v2:0/invoke"}


def test_usage_events_carry_tokens_and_bedrock_prices(gateway: RunningGateway) -> None:
    sdk = client(gateway, gateway.new_tenant("bedrock-metered"))
    sdk.chat.completions.create(
        model="bedrock-claude", messages=[{"role": "user", "content": "a b c"}]
    )
    assert (
        len(
            list(
                sdk.chat.completions.create(
                    model="bedrock-profile",
                    messages=[{"role": "user", "content": "d e"}],
                    stream=True,
                )
            )
        )
        > 1
    )
    sdk.embeddings.create(model="titan-embed", input="x y z")

    rows = gateway.usage("bedrock-metered", at_least=3)
    assert len(rows) == 3
    by_model = {r["model"]: r for r in rows}
    chat = by_model["bedrock-claude"]
    assert (chat["tokens_input"], chat["tokens_output"], chat["status"]) == (3, 4, 200)
    assert chat["provider"] == "bedrock-fake"
    assert chat["cost_usd"] == pytest.approx((3 * 3.00 + 4 * 15.00) / 1e6)
    streamed = by_model["bedrock-profile"]
    # From the stream's metadata event: the gateway's own estimate of "d e" would be 5 tokens.
    assert (streamed["tokens_input"], streamed["tokens_output"], streamed["stream"]) == (2, 3, True)
    assert streamed["cost_usd"] == pytest.approx((2 * 3.00 + 3 * 15.00) / 1e6)
    embedding = by_model["titan-embed"]
    assert (embedding["tokens_input"], embedding["tokens_output"]) == (3, 0)
    assert embedding["cost_usd"] == pytest.approx(3 * 0.02 / 1e6)


# --- the adapter alone --------------------------------------------------------------------


def _provider(url: str, **overrides: Any) -> BedrockProvider:
    values: dict[str, Any] = {
        "name": "bedrock-test",
        "kind": "bedrock",
        "region": BEDROCK_REGION,
        "base_url": url,
        "locality": "external",
    }
    return BedrockProvider(ProviderConfig(**{**values, **overrides}))


def _body(model: str, text: str = "one two three four") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def _drain(stream: ChunkStream, into: list[dict[str, Any]] | None = None) -> None:
    async for batch in stream:
        if into is not None:
            into.extend(batch)


async def test_list_models_asks_the_control_plane(fake_bedrock: ServerThread) -> None:
    provider = _provider(fake_bedrock.url)
    try:
        assert await provider.list_models() == list(bedrock_upstream.FOUNDATION_MODELS)
    finally:
        await provider.aclose()
    assert fake_bedrock.app.state.requests[-1].path == "/foundation-models"


async def test_exception_event_mid_stream_is_rate_limited(fake_bedrock: ServerThread) -> None:
    provider = _provider(fake_bedrock.url)
    stream = await provider.stream_chat(_body(bedrock_upstream.MIDSTREAM_THROTTLE))
    received: list[dict[str, Any]] = []
    try:
        with pytest.raises(RateLimited, match="throttlingException"):
            await _drain(stream, received)
    finally:
        await stream.aclose()
        await provider.aclose()
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in received)
        == "Echo: one two three four"
    )


async def test_cut_stream_is_broken_off(fake_bedrock: ServerThread) -> None:
    provider = _provider(fake_bedrock.url)
    stream = await provider.stream_chat(_body("cut-2"))
    received: list[dict[str, Any]] = []
    try:
        with pytest.raises(UpstreamUnavailable, match="broke off"):
            await _drain(stream, received)
    finally:
        await stream.aclose()
        await provider.aclose()
    assert sum(1 for c in received if c["choices"] and c["choices"][0]["delta"].get("content")) == 2


async def test_timeouts(fake_bedrock: ServerThread) -> None:
    provider = _provider(fake_bedrock.url, read_timeout=0.3)
    try:
        with pytest.raises(UpstreamTimeout):
            await provider.chat(_body("slow-3000"))
        stream = await provider.stream_chat(_body("stall"))
        with pytest.raises(UpstreamTimeout, match="stalled"):
            await _drain(stream)
        await stream.aclose()
    finally:
        await provider.aclose()


async def test_closing_a_stream_early_hangs_up_on_bedrock(fake_bedrock: ServerThread) -> None:
    state = fake_bedrock.app.state
    disconnects = state.disconnects
    provider = _provider(fake_bedrock.url)
    stream = await provider.stream_chat(_body("stall"))
    try:
        async for batch in stream:
            if any(c["choices"] and c["choices"][0]["delta"].get("content") for c in batch):
                break
    finally:
        await stream.aclose()
        await provider.aclose()
    deadline = time.monotonic() + 5
    while state.disconnects == disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert state.disconnects == disconnects + 1


async def test_wrong_secret_is_rejected_without_leaking_it(
    fake_bedrock: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    provider = _provider(fake_bedrock.url)
    try:
        with pytest.raises(UpstreamRejected) as err:
            await provider.chat(_body(CLAUDE))
    finally:
        await provider.aclose()
    assert "credentials" in err.value.message
    assert "not-the-secret" not in err.value.message


async def test_no_credentials_anywhere(
    fake_bedrock: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    before = len(fake_bedrock.app.state.requests)
    provider = _provider(fake_bedrock.url)
    try:
        with pytest.raises(UpstreamRejected, match="no AWS credentials"):
            await provider.chat(_body(CLAUDE))
    finally:
        await provider.aclose()
    assert len(fake_bedrock.app.state.requests) == before


async def test_expired_credentials_refresh_before_signing(
    fake_bedrock: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    refreshes: list[float] = []

    def refresh() -> dict[str, Any]:
        refreshes.append(time.monotonic())
        expiry = datetime.now(UTC) + timedelta(hours=1)
        return {
            "access_key": BEDROCK_ACCESS_KEY,
            "secret_key": BEDROCK_SECRET_KEY,
            "token": "session-token",
            "expiry_time": expiry.isoformat(),
        }

    expired = {
        "access_key": BEDROCK_ACCESS_KEY,
        "secret_key": "stale-secret",
        "token": "stale-token",
        "expiry_time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
    }
    credentials = RefreshableCredentials.create_from_metadata(expired, refresh, "test")
    monkeypatch.setattr(bedrock, "_resolve_credentials", lambda: credentials)
    provider = _provider(fake_bedrock.url)
    try:
        reply = await provider.chat(_body(CLAUDE, "hi"))
        await provider.chat(_body(CLAUDE, "again"))
    finally:
        await provider.aclose()
    assert reply["choices"][0]["message"]["content"] == "Echo: hi"
    assert len(refreshes) == 1
    assert fake_bedrock.app.state.requests[-1].headers["x-amz-security-token"] == "session-token"


async def test_embeddings_of_other_families_are_refused(fake_bedrock: ServerThread) -> None:
    before = len(fake_bedrock.app.state.requests)
    provider = _provider(fake_bedrock.url)
    try:
        with pytest.raises(InvalidRequest, match="Titan"):
            await provider.embed({"model": "cohere.embed-english-v3", "input": "x"})
    finally:
        await provider.aclose()
    assert len(fake_bedrock.app.state.requests) == before


async def test_one_failed_embedding_fails_the_request(fake_bedrock: ServerThread) -> None:
    provider = _provider(fake_bedrock.url)
    try:
        with pytest.raises(InvalidRequest, match="inputText is required"):
            await provider.embed({"model": "amazon.titan-embed-text-v2:0", "input": ["ok", ""]})
    finally:
        await provider.aclose()


def test_api_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="AWS credentials"):
        _provider("http://127.0.0.1:9", api_key="sk-nope")

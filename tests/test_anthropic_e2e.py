"""Anthropic end to end, on SQLite and on PostgreSQL:

(a) the `openai` SDK against the gateway, reaching the fake Anthropic upstream;
(b) the `anthropic` SDK against the gateway's /v1/messages, reaching the fake OpenAI, Ollama
    and Anthropic upstreams.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import select

from conftest import RunningGateway
from fakes.behaviour import RecordedRequest
from fakes.server import ServerThread
from switchboard.store.database import Database
from switchboard.store.schema import usage_events

pytestmark = pytest.mark.slow

OPENAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]
ANTHROPIC_TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": OPENAI_TOOLS[0]["function"]["parameters"],
    }
]
MESSAGES_MODELS = ["gpt-fake", "llama-fake", "claude-fake"]

_clients: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def oai(gateway: RunningGateway, key: str) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)
    _clients.append(sdk)
    return sdk


def ant(gateway: RunningGateway, key: str, **kwargs: Any) -> anthropic.Anthropic:
    sdk = anthropic.Anthropic(
        base_url=gateway.url, api_key=key, max_retries=0, timeout=10, **kwargs
    )
    _clients.append(sdk)
    return sdk


@pytest.fixture(scope="module")
def openai_client(gateway: RunningGateway) -> openai.OpenAI:
    return oai(gateway, gateway.new_tenant("claude-via-openai"))


@pytest.fixture(scope="module")
def claude(gateway: RunningGateway) -> anthropic.Anthropic:
    return ant(gateway, gateway.new_tenant("messages-hybrid"))


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def upstream_requests(server: ServerThread) -> list[RecordedRequest]:
    requests: list[RecordedRequest] = server.app.state.requests
    return requests


# --- (a) OpenAI clients, Anthropic upstream -------------------------------------------------


def test_openai_chat_reaches_anthropic(
    openai_client: openai.OpenAI, fake_anthropic: ServerThread
) -> None:
    requests = upstream_requests(fake_anthropic)
    before = len(requests)
    reply = openai_client.chat.completions.create(
        model="claude-fake",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        temperature=0.2,
    )
    assert reply.model == "claude-fake"
    assert reply.choices[0].message.content == "Echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 3)
    sent = requests[before]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-ant-upstream-secret"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body["model"] == "claude-3-5-haiku-20241022"
    assert sent.body["system"] == "be brief"
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    ]
    assert (sent.body["max_tokens"], sent.body["temperature"]) == (4096, 0.2)


def test_openai_max_tokens_is_length(openai_client: openai.OpenAI) -> None:
    reply = openai_client.chat.completions.create(
        model="claude-fake", messages=[{"role": "user", "content": "one two three"}], max_tokens=2
    )
    assert reply.choices[0].message.content == "Echo: one "
    assert reply.choices[0].finish_reason == "length"


def test_openai_stream_from_anthropic_with_usage(openai_client: openai.OpenAI) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="claude-fake",
            messages=[{"role": "user", "content": "count the words here"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: count the words here"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert all(c.model == "claude-fake" for c in chunks)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 5)


def test_openai_tool_round_trip_through_anthropic(
    openai_client: openai.OpenAI, fake_anthropic: ServerThread
) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = openai_client.chat.completions.create(
        model="claude-fake", messages=messages, tools=OPENAI_TOOLS
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("toolu_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = openai_client.chat.completions.create(
        model="claude-fake", messages=messages, tools=OPENAI_TOOLS
    )
    assert second.choices[0].message.content == "Tool result: sunny, 21C"
    sent = upstream_requests(fake_anthropic)[-1].body
    assert sent["tools"] == ANTHROPIC_TOOLS
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}
    ]


def test_openai_streamed_tool_call_through_anthropic(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model="claude-fake",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=OPENAI_TOOLS,
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert json.loads(arguments) == {"location": "Paris"}
    assert finish == "tool_calls"


def test_openai_sees_anthropic_upstream_errors_as_502(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        openai_client.chat.completions.create(
            model="claude-broken", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 502
    assert "500" in err.value.message
    assert "sk-ant-upstream-secret" not in err.value.response.text
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model="claude-fake", input="x")


def test_an_overloaded_anthropic_upstream_is_a_503_to_openai_clients(
    openai_client: openai.OpenAI,
) -> None:
    """Anthropic's 529 (overloaded) is retried, then answered with 503, which clients retry
    later; not 502 as if the upstream were broken."""
    with pytest.raises(openai.InternalServerError) as err:
        openai_client.chat.completions.create(
            model="claude-overloaded", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 503
    assert err.value.code == "upstream_overloaded"
    assert "529" in err.value.message


# --- (b) Anthropic clients, any upstream ----------------------------------------------------


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_messages_create(claude: anthropic.Anthropic, model: str) -> None:
    raw = claude.messages.with_raw_response.create(
        model=model, max_tokens=100, system="be brief", messages=user("hello there")
    )
    assert raw.headers["request-id"].startswith("req_")
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", model)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_messages_stream(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(
        model=model, max_tokens=100, messages=user("count the words here")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: count the words here"
    assert final.model == model
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 5)


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_messages_tool_round_trip(claude: anthropic.Anthropic, model: str) -> None:
    messages: Any = user("weather in Paris?")
    first = claude.messages.create(
        model=model, max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert first.stop_reason == "tool_use"
    block = first.content[-1]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"location": "Paris"})
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny 21C"}],
        },
    ]
    second = claude.messages.create(
        model=model, max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert second.content[0].type == "text"
    assert second.content[0].text == "Tool result: sunny 21C"


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_messages_streamed_tool_use(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(
        model=model, max_tokens=100, messages=user("weather?"), tools=ANTHROPIC_TOOLS
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[-1]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"location": "Paris"})


def stored(gateway: RunningGateway, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Columns the usage report leaves out (``endpoint``, ``tokens_estimated``), by request."""

    async def query() -> dict[str, dict[str, Any]]:
        db = Database(gateway.settings.resolved_database_url())
        columns = usage_events.c
        q = select(columns.request_id, columns.endpoint, columns.tokens_estimated).where(
            columns.request_id.in_(request_ids)
        )
        try:
            async with db.engine.connect() as conn:
                rows = (await conn.execute(q)).mappings().all()
        finally:
            await db.dispose()
        return {row["request_id"]: dict(row) for row in rows}

    return asyncio.run(query())


def _raw(gateway: RunningGateway, headers: dict[str, str], body: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/messages", headers=headers, json=body, timeout=10)


def _error_type(response: httpx.Response) -> str:
    body = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    return str(body["error"]["type"])


def test_messages_authentication(gateway: RunningGateway, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as err:
        ant(gateway, "sk-sb-not-a-key").messages.create(
            model="gpt-fake", max_tokens=10, messages=user("x")
        )
    assert err.value.response.json()["error"]["type"] == "authentication_error"
    body = {"model": "gpt-fake", "max_tokens": 10, "messages": user("x")}
    missing = _raw(gateway, {}, body)
    assert missing.status_code == 401
    assert _error_type(missing) == "authentication_error"
    # Anthropic's own header works as well as the bearer token the 2.x SDK sends.
    key = gateway.keys["messages-hybrid"]
    ok = _raw(gateway, {"x-api-key": key}, body)
    assert ok.status_code == 200
    assert ok.json()["content"][0]["text"] == "Echo: x"
    wrong_tenant = _raw(gateway, {"x-api-key": key, "X-Tenant-Id": "someone-else"}, body)
    assert wrong_tenant.status_code == 403
    assert _error_type(wrong_tenant) == "permission_error"


def test_messages_unknown_model_is_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="claude-99", max_tokens=10, messages=user("x"))
    assert err.value.response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
def test_local_tenant_cannot_reach_external_models(
    gateway: RunningGateway, fake_anthropic: ServerThread, model: str
) -> None:
    local = ant(
        gateway, gateway.keys.get("messages-local") or gateway.new_tenant("messages-local", "local")
    )
    before = len(upstream_requests(fake_anthropic))
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        local.messages.create(model=model, max_tokens=10, messages=user("x"))
    assert err.value.response.json()["error"]["type"] == "permission_error"
    assert "usage mode" in err.value.message
    assert len(upstream_requests(fake_anthropic)) == before
    reply = local.messages.create(model="llama-fake", max_tokens=10, messages=user("hi"))
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "Echo: hi"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "gpt-fake", "max_tokens": 5, "messages": []}, "messages"),
        (
            {
                "model": "gpt-fake",
                "max_tokens": 5,
                "messages": [{"role": "system", "content": "x"}],
            },
            "messages.0.role",
        ),
    ],
)
@pytest.mark.usefixtures("claude")  # it makes the tenant whose key this uses
def test_messages_bad_requests(gateway: RunningGateway, body: Any, fragment: str) -> None:
    response = _raw(gateway, {"x-api-key": gateway.keys["messages-hybrid"]}, body)
    assert response.status_code == 400
    assert _error_type(response) == "invalid_request_error"
    assert fragment in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "status", "error_class", "kind"),
    [
        ("broken", 502, anthropic.InternalServerError, "api_error"),
        ("claude-broken", 502, anthropic.InternalServerError, "api_error"),
        ("claude-overloaded", 503, anthropic.InternalServerError, "overloaded_error"),
        ("limited", 429, anthropic.RateLimitError, "rate_limit_error"),
        ("upstream-rejects", 400, anthropic.BadRequestError, "invalid_request_error"),
        ("slow", 504, anthropic.InternalServerError, "timeout_error"),
    ],
)
def test_messages_upstream_failures(
    claude: anthropic.Anthropic,
    model: str,
    status: int,
    error_class: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    with pytest.raises(error_class) as err:
        claude.messages.create(model=model, max_tokens=10, messages=user("x"))
    assert err.value.status_code == status
    assert err.value.response.json()["error"]["type"] == kind
    if status == 429:
        assert err.value.response.headers["retry-after"] == "1"


def test_messages_stream_broken_mid_way_ends_with_an_error_event(
    claude: anthropic.Anthropic,
) -> None:
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        claude.messages.stream(
            model="cut", max_tokens=100, messages=user("one two three four five")
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert received == ["Echo: ", "one ", "two "]
    assert err.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": err.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert "broke off" in str(err.value)


def test_messages_stream_overloaded_mid_way_ends_with_an_overloaded_error(
    claude: anthropic.Anthropic,
) -> None:
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        claude.messages.stream(
            model="claude-overloaded-mid-stream", max_tokens=100, messages=user("a b c")
        ) as stream,
    ):
        list(stream.text_stream)
    assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_messages_are_metered_once_each(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("messages-metered")
    sdk = ant(gateway, key)
    request_ids = []
    for model in MESSAGES_MODELS:
        raw = sdk.messages.with_raw_response.create(
            model=model, max_tokens=50, messages=user("a b c"), metadata={"user_id": "alice"}
        )
        request_ids.append(raw.headers["request-id"])
    with sdk.messages.stream(model="claude-fake", max_tokens=50, messages=user("d e")) as stream:
        assert stream.get_final_message().usage.output_tokens == 3
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="claude-99", max_tokens=5, messages=user("x"))

    rows = gateway.usage("messages-metered", at_least=5)
    assert len(rows) == 5
    extra = stored(gateway, [r["request_id"] for r in rows])
    assert {e["endpoint"] for e in extra.values()} == {"messages"}
    assert len({r["request_id"] for r in rows}) == 5
    assert set(request_ids) <= {r["request_id"] for r in rows}
    done = [r for r in rows if r["status"] == 200 and not r["stream"]]
    assert {r["model"]: r["provider"] for r in done} == {
        "gpt-fake": "openai-fake",
        "llama-fake": "ollama-fake",
        "claude-fake": "anthropic-fake",
    }
    assert all(
        (r["tokens_input"], r["tokens_output"], r["user_id"]) == (3, 4, "alice") for r in done
    )
    claude_row = next(r for r in done if r["model"] == "claude-fake")
    assert claude_row["cost_usd"] == pytest.approx((3 * 0.80 + 4 * 4.00) / 1e6)
    streamed = next(r for r in rows if r["stream"])
    assert (streamed["model"], streamed["status"]) == ("claude-fake", 200)
    assert (streamed["tokens_input"], streamed["tokens_output"]) == (2, 3)
    assert not extra[streamed["request_id"]]["tokens_estimated"]
    missing = next(r for r in rows if r["status"] == 404)
    assert missing["model"] == "claude-99"

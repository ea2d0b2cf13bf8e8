"""The fake Anthropic upstream speaks the real wire format: drive it with the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from starlette.applications import Starlette

from fakes.anthropic_upstream import MIDSTREAM_ERROR_MODEL, MODELS, create_app
from fakes.behaviour import RecordedRequest
from fakes.server import ServerThread

pytestmark = pytest.mark.slow  # starts a real server on 127.0.0.1

API_KEY = "sk-ant-fake-upstream"
MODEL = "claude-haiku-4-5"
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture(scope="module")
def app() -> Starlette:
    return create_app(api_key=API_KEY)


@pytest.fixture(scope="module")
def server(app: Starlette) -> Iterator[ServerThread]:
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def sdk(server: ServerThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.url, api_key=API_KEY, max_retries=0, timeout=5.0
    ) as client:
        yield client


def last_request(app: Starlette) -> RecordedRequest:
    requests: list[RecordedRequest] = app.state.requests
    return requests[-1]


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_text_message(sdk: anthropic.Anthropic, app: Starlette) -> None:
    message = sdk.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=user("hello there world")
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: hello there world"
    assert message.stop_reason == "end_turn"
    # system words count as input, like the other fakes count a system message
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    recorded = last_request(app)
    assert recorded.path == "/v1/messages"
    assert recorded.headers["authorization"] == f"Bearer {API_KEY}"  # how the 2.x SDK sends it
    assert recorded.headers["anthropic-version"]
    assert recorded.body["system"] == "Be brief."


def test_max_tokens_cuts_the_reply(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model=MODEL, max_tokens=2, messages=user("one two three"))
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: one "
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_stream_helper(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model=MODEL, max_tokens=100, messages=user("one two three")) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert pieces == ["Echo: ", "one ", "two ", "three"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "Echo: one two three"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


def test_raw_stream_event_sequence(sdk: anthropic.Anthropic) -> None:
    events = list(
        sdk.messages.create(model=MODEL, max_tokens=100, messages=user("hi"), stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.content == []
    assert start.message.usage.input_tokens == 1
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 2


def test_sse_wire_format_has_event_names_and_ping(server: ServerThread) -> None:
    response = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 10, "messages": user("x"), "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-1] == "message_stop"
    for raw, name in zip(events, names, strict=True):
        assert json.loads(raw.split("\n")[1].removeprefix("data: "))["type"] == name


def test_tool_use_and_result_round_trip(sdk: anthropic.Anthropic, app: Starlette) -> None:
    messages: Any = user("weather in Paris?")
    first = sdk.messages.create(
        model=MODEL, max_tokens=100, messages=messages, tools=[WEATHER_TOOL]
    )
    assert last_request(app).body["tools"] == [WEATHER_TOOL]
    assert first.stop_reason == "tool_use"
    block = first.content[0]
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert (block.name, block.input) == ("get_weather", {"location": "Paris"})
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny 21C"}],
        },
    ]
    second = sdk.messages.create(
        model=MODEL, max_tokens=100, messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.content[0].type == "text"
    assert second.content[0].text == "Tool result: sunny 21C"
    assert second.stop_reason == "end_turn"


def test_streamed_tool_use(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=user("weather?"), tools=[WEATHER_TOOL]
    ) as stream:
        fragments = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(fragments) == 4
    assert json.loads("".join(fragments)) == {"location": "Paris"}
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"location": "Paris"}
    assert final.stop_reason == "tool_use"


def test_models_list(sdk: anthropic.Anthropic) -> None:
    assert [m.id for m in sdk.models.list()] == [model_id for model_id, _ in MODELS]


@pytest.mark.parametrize(
    ("model", "error_class", "kind"),
    [
        ("error-400", anthropic.BadRequestError, "invalid_request_error"),
        ("error-404", anthropic.NotFoundError, "not_found_error"),
        ("error-429", anthropic.RateLimitError, "rate_limit_error"),
        ("error-500", anthropic.InternalServerError, "api_error"),
        ("error-529", anthropic.InternalServerError, "overloaded_error"),
    ],
)
def test_errors_use_anthropics_shape(
    sdk: anthropic.Anthropic, model: str, error_class: type[anthropic.APIStatusError], kind: str
) -> None:
    with pytest.raises(error_class) as err:
        sdk.messages.create(model=model, max_tokens=10, messages=user("x"))
    body = err.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["request_id"].startswith("req_")
    if model == "error-429":
        assert err.value.response.headers["retry-after"] == "1"


def test_key_also_accepted_as_x_api_key(server: ServerThread) -> None:
    response = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 10, "messages": user("hi")},
    )
    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "Echo: hi"}]


def test_bad_key_is_401(server: ServerThread) -> None:
    with (
        anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError) as err,
    ):
        wrong.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert err.value.response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("headers", "body", "fragment"),
    [
        ({}, {"model": MODEL, "max_tokens": 5, "messages": user("x")}, "anthropic-version"),
        (None, {"model": MODEL, "messages": user("x")}, "max_tokens"),
        (None, {"max_tokens": 5, "messages": user("x")}, "model"),
        (None, {"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        (
            None,
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "system",
        ),
    ],
)
def test_malformed_requests_are_400(
    server: ServerThread, headers: dict[str, str] | None, body: dict[str, Any], fragment: str
) -> None:
    sent = {
        "x-api-key": API_KEY,
        **({"anthropic-version": "2023-06-01"} if headers is None else {}),
    }
    response = httpx.post(server.url + "/v1/messages", headers=sent, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


def test_cut_stream_raises(sdk: anthropic.Anthropic) -> None:
    received: list[str] = []
    with (
        # Older SDKs let the transport's error through; newer ones wrap it in APIConnectionError.
        pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)) as err,
        sdk.messages.stream(model="cut-2", max_tokens=100, messages=user("a b c d e")) as stream,
    ):
        received.extend(stream.text_stream)
    assert received == ["Echo: ", "a "]
    assert "incomplete chunked read" in repr(err.value) + repr(err.value.__cause__)


def test_midstream_error_event(sdk: anthropic.Anthropic) -> None:
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        sdk.messages.stream(
            model=MIDSTREAM_ERROR_MODEL, max_tokens=100, messages=user("a b c")
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert received == ["Echo: "]
    assert "overloaded_error" in str(err.value)

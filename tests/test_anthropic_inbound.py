"""Inbound translation for the /v1/messages surface: Anthropic requests to the gateway's OpenAI
format, OpenAI completions and chunks back to Anthropic messages and events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from switchboard.errors import InvalidRequest, UpstreamUnavailable
from switchboard.providers.anthropic_events import AnthropicEventEncoder
from switchboard.providers.anthropic_format import to_anthropic_request
from switchboard.providers.anthropic_inbound import (
    anthropic_message_from_openai,
    check_messages,
    openai_request_from_anthropic,
)

PNG = "iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA},
}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}
CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
}


# --- inbound: Anthropic request → OpenAI request ----------------------------------------------


def messages_request(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "any-model", "max_tokens": 100, "messages": list(messages), **extra}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        (messages_request({"role": "system", "content": "x"}), "messages.0.role"),
        (messages_request({"role": "user", "content": 5}), "messages.0.content"),
        (messages_request({"role": "user", "content": "x"}, temperature=1.5), "temperature"),
        (messages_request({"role": "user", "content": "x"}, stream="yes"), "stream"),
        (messages_request({"role": "user", "content": "x"}, stream=1), "stream"),
        (
            messages_request({"role": "user", "content": "x"}, stop_sequences="END"),
            "stop_sequences",
        ),
        (messages_request({"role": "user", "content": "x"}, tools=[{}]), "tools.0"),
        (messages_request({"role": "user", "content": "x"}, tool_choice="auto"), "tool_choice"),
    ],
)
def test_check_messages_names_the_bad_field(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_messages(body)
    assert err.value.param == param


def test_inbound_text_system_and_parameters() -> None:
    body = messages_request(
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        stream=True,
        temperature=0.3,
        top_p=0.8,
        top_k=5,
        stop_sequences=["END"],
        metadata={"user_id": "alice"},
    )
    check_messages(body)
    assert openai_request_from_anthropic(body) == {
        "model": "any-model",
        "max_tokens": 100,
        "stream": True,
        "temperature": 0.3,
        "top_p": 0.8,
        "stop": ["END"],
        "user": "alice",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "again"},
        ],
    }


def test_inbound_images() -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": "what?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    out = openai_request_from_anthropic(messages_request({"role": "user", "content": blocks}))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]


def test_inbound_tool_use_and_results() -> None:
    body = messages_request(
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "boom",
                    "is_error": True,
                },
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    out = openai_request_from_anthropic(body)
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    assert out["tools"] == [OPENAI_TOOL]
    assert (out["tool_choice"], out["parallel_tool_calls"]) == ("required", False)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_inbound_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = messages_request(
        {"role": "user", "content": "x"}, tools=[ANTHROPIC_TOOL], tool_choice=choice
    )
    assert openai_request_from_anthropic(body)["tool_choice"] == expected


def test_inbound_refuses_server_tools_and_documents() -> None:
    search = {"type": "web_search_20250305", "name": "web_search"}
    with pytest.raises(InvalidRequest):
        openai_request_from_anthropic(
            messages_request({"role": "user", "content": "x"}, tools=[search])
        )
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "x"},
    }
    with pytest.raises(InvalidRequest):
        openai_request_from_anthropic(messages_request({"role": "user", "content": [document]}))


def test_round_trip_through_both_translations() -> None:
    """An Anthropic request that goes in through the surface and out to an Anthropic upstream
    arrives as it was sent."""
    body = messages_request(
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
        system="Be brief.",
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        stop_sequences=["END"],
        metadata={"user_id": "alice"},
        temperature=0.5,
    )
    assert to_anthropic_request(openai_request_from_anthropic(body), stream=False) == body


# --- inbound: OpenAI chat.completion → Anthropic message --------------------------------------


def completion(message: dict[str, Any], finish: str, **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, **usage},
    }


def test_completion_to_message() -> None:
    out = anthropic_message_from_openai(
        completion(
            {"role": "assistant", "content": "Hi", "tool_calls": [CALL]},
            "tool_calls",
            prompt_tokens_details={"cached_tokens": 6},
        ),
        "alias",
    )
    assert out["id"].startswith("msg_")
    assert (out["type"], out["role"], out["model"]) == ("message", "assistant", "alias")
    assert out["content"] == [
        {"type": "text", "text": "Hi"},
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "get_weather",
            "input": {"location": "Paris"},
        },
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {
        "input_tokens": 4,
        "output_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 6,
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_completion_stop_reasons(finish: str, stop: str) -> None:
    out = anthropic_message_from_openai(
        completion({"role": "assistant", "content": ""}, finish), "m"
    )
    assert out["stop_reason"] == stop
    assert out["content"] == []


def test_completion_with_broken_tool_arguments_is_an_upstream_error() -> None:
    call = {**CALL, "function": {"name": "f", "arguments": "{broken"}}
    with pytest.raises(UpstreamUnavailable):
        anthropic_message_from_openai(
            completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"),
            "m",
        )


# --- inbound: OpenAI chunks → Anthropic events -------------------------------------------------


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        events.append(data)
    return events


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE: dict[str, Any] = {
    "id": "c",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def test_encoder_text_stream() -> None:
    encode = AnthropicEventEncoder("alias", input_tokens=5)
    events = parse_events(encode([chunk({"role": "assistant", "content": ""})]))
    assert [e["type"] for e in events] == ["message_start", "ping"]
    start = events[0]["message"]
    assert (start["id"], start["model"], start["content"]) == (encode.message_id, "alias", [])
    assert start["usage"] == {"input_tokens": 5, "output_tokens": 0}
    events = parse_events(encode([chunk({"content": "Hel"}), chunk({"content": "lo"})]))
    assert events == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    ]
    events = parse_events(encode([chunk({}, "length"), USAGE]))
    assert [e["type"] for e in events] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[1]["usage"]["input_tokens"] == 7
    assert events[1]["usage"]["output_tokens"] == 3
    assert encode([chunk({"content": "late"})]) == b""


def test_encoder_takes_usage_on_the_finish_chunk_but_not_on_others() -> None:
    encode = AnthropicEventEncoder("alias")
    running = {**chunk({"content": "Hi"}), "usage": USAGE["usage"]}
    finish = {**chunk({}, "stop"), "usage": {**USAGE["usage"], "completion_tokens": 9}}
    events = parse_events(encode([running, finish, USAGE]))
    assert [e["type"] for e in events][-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [e["type"] for e in events].count("message_delta") == 1
    assert events[-2]["usage"]["output_tokens"] == 9


def test_encoder_text_then_tool_calls() -> None:
    encode = AnthropicEventEncoder("alias")
    opening = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    second = {
        "index": 1,
        "id": "call_2",
        "type": "function",
        "function": {"name": "now", "arguments": "{}"},
    }
    raw = encode(
        [
            chunk({"role": "assistant", "content": "Checking."}),
            chunk({"tool_calls": [opening]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({"tool_calls": [second]}),
            chunk({}, "tool_calls"),
            USAGE,
        ]
    )
    events = parse_events(raw)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["type"]) for e in starts] == [
        (0, "text"),
        (1, "tool_use"),
        (2, "tool_use"),
    ]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    json_parts = [
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["index"] == 1
    ]
    assert orjson.loads("".join(json_parts)) == {"location": "Paris"}
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert events[-1] == {"type": "message_stop"}

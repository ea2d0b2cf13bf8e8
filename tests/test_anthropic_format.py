"""Outbound translation for the Anthropic adapter: OpenAI requests to Anthropic's Messages API,
its responses and event streams back to OpenAI's format."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from switchboard.errors import InvalidRequest, UpstreamUnavailable
from switchboard.providers.anthropic_events import AnthropicEventEncoder
from switchboard.providers.anthropic_format import (
    DEFAULT_MAX_TOKENS,
    from_anthropic_message,
    to_anthropic_request,
)
from switchboard.providers.anthropic_stream import AnthropicStreamDecoder

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


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": list(messages), **extra}


# --- OpenAI request → Anthropic request -----------------------------------------------------


def test_system_and_developer_messages_become_the_top_level_system() -> None:
    out = to_anthropic_request(
        chat(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
            {"role": "user", "content": "hi"},
        ),
        stream=False,
    )
    assert out["system"] == "Be brief.\n\nNo emoji."
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert "stream" not in out
    assert to_anthropic_request(chat({"role": "user", "content": "x"}), stream=True)["stream"]


def test_consecutive_same_role_messages_are_merged() -> None:
    out = to_anthropic_request(
        chat(
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
        ),
        stream=False,
    )
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert [b["text"] for b in out["messages"][0]["content"]] == ["one", "two"]
    assert [b["text"] for b in out["messages"][1]["content"]] == ["three", "four"]


def test_image_parts() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    out = to_anthropic_request(chat({"role": "user", "content": parts}), stream=False)
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
    ],
)
def test_parts_anthropic_cannot_take_are_refused(part: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic_request(chat({"role": "user", "content": [part]}), stream=False)
    assert err.value.param == "messages[0].content"


def test_tool_calls_and_tool_results() -> None:
    out = to_anthropic_request(
        chat(
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "t2"}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "dry"}]},
            {"role": "user", "content": "thanks"},
        ),
        stream=False,
    )
    assistant, results = out["messages"][1], out["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
            {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {"location": "Paris"}},
        ],
    }
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "t2",
                "content": [{"type": "text", "text": "dry"}],
            },
            {"type": "text", "text": "thanks"},
        ],
    }
    assert len(out["messages"]) == 3


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {**CALL, "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequest):
        to_anthropic_request(
            chat({"role": "assistant", "content": None, "tool_calls": [call]}), stream=False
        )


def test_tools_become_input_schemas() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    out = to_anthropic_request(
        chat({"role": "user", "content": "x"}, tools=[OPENAI_TOOL, bare]), stream=False
    )
    assert out["tools"] == [
        ANTHROPIC_TOOL,
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    body = chat({"role": "user", "content": "x"}, tools=[OPENAI_TOOL], tool_choice=choice)
    body["parallel_tool_calls"] = parallel
    assert to_anthropic_request(body, stream=False)["tool_choice"] == expected


def test_sampling_and_limits() -> None:
    out = to_anthropic_request(
        chat(
            {"role": "user", "content": "x"},
            temperature=1.7,
            top_p=0.9,
            stop="END",
            user="alice",
            max_tokens=50,
        ),
        stream=False,
    )
    assert (out["temperature"], out["top_p"], out["max_tokens"]) == (1.0, 0.9, 50)
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "alice"}
    newer = chat({"role": "user", "content": "x"}, max_completion_tokens=77, stop=["a", "b"])
    assert to_anthropic_request(newer, stream=False)["max_tokens"] == 77
    assert to_anthropic_request(newer, stream=False)["stop_sequences"] == ["a", "b"]
    plain = to_anthropic_request(chat({"role": "user", "content": "x"}), stream=False)
    assert plain["max_tokens"] == DEFAULT_MAX_TOKENS
    assert not {"temperature", "top_p", "stop_sequences", "metadata", "system"} & set(plain)


def test_more_than_one_choice_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic_request(chat({"role": "user", "content": "x"}, n=2), stream=False)
    assert err.value.param == "n"


# --- Anthropic response → OpenAI chat.completion ----------------------------------------------


def message(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop,
        "usage": {"input_tokens": 10, "output_tokens": 4, **usage},
    }


def test_text_response() -> None:
    out = from_anthropic_message(message([{"type": "text", "text": "Hello"}]), "claude-x")
    assert out["object"] == "chat.completion"
    assert out["id"] == "chatcmpl-abc"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 10
    assert out["usage"]["total_tokens"] == 14


def test_tool_use_response() -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "toolu_9",
            "name": "get_weather",
            "input": {"location": "Paris"},
        },
    ]
    out = from_anthropic_message(message(blocks, "tool_use"), "claude-x")
    msg = out["choices"][0]["message"]
    assert msg["content"] == "Let me check."
    assert msg["reasoning_content"] == "hmm"
    assert msg["tool_calls"] == [
        {
            "id": "toolu_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    only_tool = from_anthropic_message(message(blocks[2:], "tool_use"), "claude-x")
    assert only_tool["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    out = from_anthropic_message(message([], stop), "claude-x")
    assert out["choices"][0]["finish_reason"] == finish


def test_cache_tokens_count_as_prompt_tokens() -> None:
    data = message([], cache_read_input_tokens=100, cache_creation_input_tokens=20)
    assert from_anthropic_message(data, "claude-x")["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 4,
        "total_tokens": 134,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
    }


# --- the Anthropic event stream → OpenAI chunks -----------------------------------------------


def sse(*events: dict[str, Any]) -> list[bytes]:
    lines: list[bytes] = []
    for event in events:
        lines += [b"event: " + event["type"].encode(), b"data: " + orjson.dumps(event), b""]
    return lines


START = {
    "type": "message_start",
    "message": {
        "id": "msg_s1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1},
    },
}


def text_delta(text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def test_decoder_text_stream() -> None:
    decode = AnthropicStreamDecoder("claude-x")
    head = decode(
        sse(
            START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        + sse({"type": "ping"})
    )
    assert [c["choices"][0]["delta"] for c in head] == [{"role": "assistant", "content": ""}]
    body = decode(sse(text_delta("Hello"), text_delta(" world")))
    assert [c["choices"][0]["delta"] for c in body] == [{"content": "Hello"}, {"content": " world"}]
    tail = decode(
        sse(
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 2},
            },
            {
                "type": "message_delta",
                "delta": {"stop_reason": None},
                "usage": {"output_tokens": 5},
            },
            {"type": "message_stop"},
        )
    )
    assert tail[0]["choices"][0]["finish_reason"] == "stop"
    assert tail[1]["choices"] == []
    assert tail[1]["usage"]["prompt_tokens"] == 15
    assert tail[1]["usage"]["completion_tokens"] == 5  # message_delta usage is cumulative
    assert tail[1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    assert {c["id"] for c in head + body + tail} == {"chatcmpl-s1"}
    assert all(c["model"] == "claude-x" for c in head + body + tail)


def test_decoder_tool_stream() -> None:
    decode = AnthropicStreamDecoder("claude-x")
    tool = {"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {}}

    def json_delta(part: str) -> dict[str, Any]:
        return {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": part},
        }

    chunks = decode(
        sse(
            START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            text_delta("Checking."),
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": tool},
            json_delta(""),
            json_delta('{"location":'),
            json_delta(' "Paris"}'),
            {"type": "content_block_stop", "index": 1},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 9},
            },
            {"type": "message_stop"},
        )
    )
    calls = [
        d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(c["function"]["arguments"] for c in calls) == '{"location": "Paris"}'
    assert all(c["index"] == 0 for c in calls)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_decoder_error_event_raises() -> None:
    decode = AnthropicStreamDecoder("claude-x")
    decode(sse(START))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamUnavailable) as err:
        decode(sse(error))
    assert "overloaded_error" in err.value.message


def test_decoder_rejects_malformed_lines() -> None:
    with pytest.raises(UpstreamUnavailable):
        AnthropicStreamDecoder("claude-x")([b"data: {nope"])


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


def test_decoder_then_encoder_relays_an_anthropic_stream() -> None:
    """Anthropic upstream → OpenAI chunks → Anthropic events: the content survives."""
    decode, encode = AnthropicStreamDecoder("claude-x"), AnthropicEventEncoder("claude-x")
    chunks = decode(
        sse(
            START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            text_delta("Hi"),
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 1},
            },
            {"type": "message_stop"},
        )
    )
    events = parse_events(encode(chunks))
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[5]["usage"]["input_tokens"] == 12  # 15 prompt tokens less 3 read from cache
    assert events[5]["usage"]["cache_read_input_tokens"] == 3

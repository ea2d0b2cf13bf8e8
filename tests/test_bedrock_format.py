"""Bedrock translation without I/O: OpenAI chat <-> Converse, ConverseStream events -> OpenAI
chunks, Titan embeddings, error types, model-id paths, and the fake's event-stream encoder
against botocore's decoder."""

from __future__ import annotations

import base64
import struct
from typing import Any

import botocore.session
import orjson
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.serialize import create_serializer

from fakes.bedrock_upstream import encode_event, encode_exception, encode_message
from switchboard.config import ProviderConfig
from switchboard.errors import (
    InvalidRequest,
    RateLimited,
    SwitchboardError,
    UpstreamOverloaded,
    UpstreamUnavailable,
)
from switchboard.providers.bedrock import control_plane_url, model_path
from switchboard.providers.bedrock_format import (
    BedrockStreamDecoder,
    converse_usage,
    error_message,
    error_status,
    finish_reason,
    from_converse,
    from_titan_embed,
    to_converse,
    to_titan_embed,
)

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
CALL = {
    "id": "tooluse_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
}


def _req(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, **extra}


# --- request ------------------------------------------------------------------------------


def test_plain_chat() -> None:
    assert to_converse(_req([{"role": "user", "content": "hi"}])) == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}]
    }


def test_system_and_developer_messages_become_system_blocks() -> None:
    out = to_converse(
        _req(
            [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "in French"}]},
                {"role": "user", "content": "hi"},
            ]
        )
    )
    assert out["system"] == [{"text": "be brief"}, {"text": "in French"}]
    assert out["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]


def test_consecutive_messages_of_one_role_merge() -> None:
    out = to_converse(
        _req(
            [
                {"role": "user", "content": "a"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "b"}, {"type": "text", "text": ""}],
                },
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
        {"role": "assistant", "content": [{"text": "c"}, {"text": "d"}]},
    ]


@pytest.mark.parametrize(
    ("mime", "fmt"),
    [
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("image/jpg", "jpeg"),
        ("image/gif", "gif"),
        ("image/webp", "webp"),
    ],
)
def test_data_url_images_become_image_blocks(mime: str, fmt: str) -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{PNG}"}},
    ]
    out = to_converse(_req([{"role": "user", "content": content}]))
    assert out["messages"][0]["content"] == [
        {"text": "what is this?"},
        {"image": {"format": fmt, "source": {"bytes": PNG}}},
    ]


@pytest.mark.parametrize(
    ("part", "words"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "inline"),
        ({"type": "image_url", "image_url": {"url": f"data:image/png,{PNG}"}}, "inline"),
        (
            {"type": "image_url", "image_url": {"url": f"data:image/tiff;base64,{PNG}"}},
            "image/tiff",
        ),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "input_audio"),
    ],
)
def test_unsupported_content_is_refused(part: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_converse(_req([{"role": "user", "content": [part]}]))
    assert words in err.value.message
    assert err.value.param == "messages[0].content"


def test_inference_config() -> None:
    out = to_converse(
        _req(
            [{"role": "user", "content": "x"}],
            max_tokens=50,
            temperature=0.2,
            top_p=0.9,
            stop="END",
            seed=7,
        )
    )
    assert out["inferenceConfig"] == {
        "maxTokens": 50,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    newer = to_converse(
        _req(
            [{"role": "user", "content": "x"}],
            max_tokens=50,
            max_completion_tokens=70,
            stop=["a", "b"],
            temperature=0,
        )
    )
    assert newer["inferenceConfig"] == {
        "maxTokens": 70,
        "temperature": 0,
        "stopSequences": ["a", "b"],
    }


def test_several_choices_are_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_converse(_req([{"role": "user", "content": "x"}], n=2))
    assert err.value.param == "n"


def test_unknown_role_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_converse(_req([{"role": "function", "content": "x"}]))
    assert err.value.param == "messages[0].role"


def test_tools_become_tool_config() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    out = to_converse(_req([{"role": "user", "content": "x"}], tools=[TOOL, bare]))
    assert out["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "inputSchema": {"json": TOOL["function"]["parameters"]},  # type: ignore[index]
                }
            },
            {
                "toolSpec": {
                    "name": "now",
                    "inputSchema": {"json": {"type": "object", "properties": {}}},
                }
            },
        ]
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"tool": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any] | None) -> None:
    extra = {"tool_choice": choice} if choice is not None else {}
    config = to_converse(_req([{"role": "user", "content": "x"}], tools=[TOOL], **extra))[
        "toolConfig"
    ]
    assert config.get("toolChoice") == expected


def test_tool_choice_none_drops_tools_unless_the_history_uses_them() -> None:
    plain = to_converse(_req([{"role": "user", "content": "x"}], tools=[TOOL], tool_choice="none"))
    assert "toolConfig" not in plain
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"},
    ]
    used = to_converse(_req(history, tools=[TOOL], tool_choice="none"))
    assert "toolChoice" not in used["toolConfig"]
    assert len(used["toolConfig"]["tools"]) == 1


def test_tool_calls_and_results_round_trip_as_blocks() -> None:
    second_call = {**CALL, "id": "tooluse_2", "function": {"name": "get_weather", "arguments": ""}}
    out = to_converse(
        _req(
            [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, second_call]},
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"},
                {
                    "role": "tool",
                    "tool_call_id": "tooluse_2",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"role": "user", "content": "thanks"},
            ],
            tools=[TOOL],
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"text": "Checking."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_1",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    }
                },
                {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "sunny"}]}},
                {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "rain"}]}},
                {"text": "thanks"},
            ],
        },
    ]


def test_tool_call_arguments_must_be_json() -> None:
    bad = {**CALL, "function": {"name": "get_weather", "arguments": "{location: Paris"}}
    with pytest.raises(InvalidRequest, match="not JSON"):
        to_converse(
            _req([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [bad]}])
        )


# --- response -----------------------------------------------------------------------------


def _converse(
    content: list[dict[str, Any]], stop: str = "end_turn", **usage: int
) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8, **usage},
        "metrics": {"latencyMs": 10},
    }


def test_text_response() -> None:
    out = from_converse(_converse([{"text": "Hello "}, {"text": "there"}]), MODEL)
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == MODEL
    (choice,) = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello there"}
    assert choice["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_tool_use_response() -> None:
    use = {"toolUseId": "tooluse_9", "name": "get_weather", "input": {"location": "Paris"}}
    out = from_converse(_converse([{"toolUse": use}], "tool_use"), MODEL)
    message = out["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "tooluse_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_is_kept_apart_from_the_answer() -> None:
    thinking = {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}}
    message = from_converse(_converse([thinking, {"text": "42"}]), MODEL)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "42", "reasoning_content": "hmm"}


@pytest.mark.parametrize(
    ("stop", "calls", "expected"),
    [
        ("end_turn", False, "stop"),
        ("stop_sequence", False, "stop"),
        ("max_tokens", False, "length"),
        ("model_context_window_exceeded", False, "length"),
        ("tool_use", True, "tool_calls"),
        ("end_turn", True, "tool_calls"),
        ("max_tokens", True, "length"),
        ("guardrail_intervened", False, "content_filter"),
        ("content_filtered", False, "content_filter"),
        ("malformed_model_output", False, "stop"),
    ],
)
def test_finish_reasons(stop: str, calls: bool, expected: str) -> None:
    assert finish_reason(stop, calls) == expected


def test_cache_tokens_count_as_prompt_tokens() -> None:
    usage = converse_usage(
        {
            "inputTokens": 10,
            "outputTokens": 4,
            "cacheReadInputTokens": 100,
            "cacheWriteInputTokens": 5,
        }
    )
    assert usage == {
        "prompt_tokens": 115,
        "completion_tokens": 4,
        "total_tokens": 119,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 5},
    }


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/", 400, 429),
        ("throttlingException", 200, 429),
        ("ValidationException", 500, 400),
        ("validationException", 200, 400),
        ("UnrecognizedClientException", 400, 403),
        ("ResourceNotFoundException", 400, 404),
        ("ModelTimeoutException", 400, 408),
        ("modelStreamErrorException", 200, 424),
        ("SomethingNewException", 418, 418),
        (None, 503, 503),
    ],
)
def test_error_status(kind: str | None, status: int, expected: int) -> None:
    assert error_status(kind, status) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"message": "Too many requests"}', "Too many requests"),
        (b'{"Message": "Invalid model identifier"}', "Invalid model identifier"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"[]", "no details"),
        (b"", "no details"),
    ],
)
def test_error_message(raw: bytes, expected: str) -> None:
    assert error_message(raw) == expected


# --- stream -------------------------------------------------------------------------------


def _decode(decoder: BedrockStreamDecoder, *frames: bytes) -> list[dict[str, Any]]:
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))
    return [chunk for message in buffer for chunk in decoder(message.headers, message.payload)]


USAGE_EVENT = encode_event(
    "metadata", {"usage": {"inputTokens": 4, "outputTokens": 3, "totalTokens": 7}}
)


def test_text_stream() -> None:
    decoder = BedrockStreamDecoder(MODEL)
    chunks = _decode(
        decoder,
        encode_event("messageStart", {"role": "assistant"}),
        encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Echo: "}}),
        encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": ""}}),
        encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
        encode_event("contentBlockStop", {"contentBlockIndex": 0}),
    )
    done_before_stop = decoder.done
    chunks += _decode(decoder, encode_event("messageStop", {"stopReason": "end_turn"}), USAGE_EVENT)
    assert (done_before_stop, decoder.done) == (False, True)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Echo: "},
        {"content": "hi"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_tool_call_stream_after_text() -> None:
    decoder = BedrockStreamDecoder(MODEL)
    start = {"toolUse": {"toolUseId": "tooluse_7", "name": "get_weather"}}
    chunks = _decode(
        decoder,
        encode_event(
            "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me check."}}
        ),
        encode_event("contentBlockStop", {"contentBlockIndex": 0}),
        encode_event("contentBlockStart", {"contentBlockIndex": 1, "start": start}),
        encode_event(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"location": '}}},
        ),
        encode_event(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}},
        ),
        encode_event("contentBlockStop", {"contentBlockIndex": 1}),
        encode_event("messageStop", {"stopReason": "tool_use"}),
        USAGE_EVENT,
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "Let me check."}
    assert deltas[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "tooluse_7",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:4]]
    assert [d["tool_calls"][0]["index"] for d in deltas[2:4]] == [0, 0]
    assert orjson.loads("".join(fragments)) == {"location": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_stream() -> None:
    decoder = BedrockStreamDecoder(MODEL)
    delta = {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "thinking"}}}
    (chunk,) = _decode(decoder, encode_event("contentBlockDelta", delta))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "thinking"}


def test_unknown_events_are_skipped() -> None:
    decoder = BedrockStreamDecoder(MODEL)
    assert (
        _decode(
            decoder, encode_event("somethingNew", {"x": 1}), encode_event("contentBlockStop", {})
        )
        == []
    )
    headers = {":message-type": "other"}
    assert decoder(headers, b"") == []


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("throttlingException", RateLimited),
        ("validationException", InvalidRequest),
        ("modelStreamErrorException", UpstreamUnavailable),
        ("internalServerException", UpstreamUnavailable),
        ("serviceUnavailableException", UpstreamOverloaded),
    ],
)
def test_exception_events_raise_our_errors(kind: str, error: type[SwitchboardError]) -> None:
    decoder = BedrockStreamDecoder(MODEL, "bedrock-prod")
    with pytest.raises(error) as err:
        _decode(
            decoder,
            encode_event("messageStart", {"role": "assistant"}),
            encode_exception(kind, "slow down"),
        )
    assert type(err.value) is error
    assert "slow down" in err.value.message
    assert "bedrock-prod" in err.value.message


def test_error_messages_and_malformed_events_raise() -> None:
    decoder = BedrockStreamDecoder(MODEL)
    with pytest.raises(UpstreamUnavailable, match="InternalFailure"):
        decoder(
            {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"},
            b"",
        )
    event = {":message-type": "event", ":event-type": "contentBlockDelta"}
    with pytest.raises(UpstreamUnavailable, match="malformed"):
        decoder(event, b"{not json")
    with pytest.raises(UpstreamUnavailable, match="malformed"):
        decoder(event, b"[1]")
    with pytest.raises(UpstreamUnavailable, match="before its tool call"):
        decoder(
            event, orjson.dumps({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}})
        )


# --- the fake's encoder, checked by botocore's decoder --------------------------------------


def test_encoder_round_trips_through_botocore_byte_by_byte() -> None:
    frames = [
        encode_event("messageStart", {"role": "assistant"}),
        encode_message({":message-type": "event", ":event-type": "x"}, b""),
        encode_exception("throttlingException", "slow down"),
        encode_message({":event-type": "big"}, b"\x00\xff" * 40_000),
    ]
    buffer = EventStreamBuffer()
    messages = []
    for byte in b"".join(frames):
        buffer.add_data(bytes([byte]))
        messages.extend(buffer)
    assert len(messages) == 4
    assert messages[0].headers == {
        ":event-type": "messageStart",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert orjson.loads(messages[0].payload) == {"role": "assistant", "p": "abcdefgh"}
    assert messages[1].payload == b""
    assert messages[2].headers[":exception-type"] == "throttlingException"
    assert orjson.loads(messages[2].payload) == {"message": "slow down"}
    assert messages[3].payload == b"\x00\xff" * 40_000
    total, headers_length = struct.unpack("!II", frames[0][:8])
    assert total == len(frames[0])
    assert headers_length == len(frames[0]) - 16 - len(messages[0].payload)


def test_corrupt_frames_fail_botocores_checksum() -> None:
    frame = bytearray(encode_event("messageStart", {"role": "assistant"}))
    frame[-6] ^= 0x01  # a payload byte
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(frame))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


# --- embeddings ---------------------------------------------------------------------------


def test_titan_requests() -> None:
    titan = "amazon.titan-embed-text-v2:0"
    assert to_titan_embed({"model": titan, "input": "hi"}) == [{"inputText": "hi"}]
    assert to_titan_embed({"model": titan, "input": ["a", "b"], "dimensions": 256}) == [
        {"inputText": "a", "dimensions": 256},
        {"inputText": "b", "dimensions": 256},
    ]
    with pytest.raises(InvalidRequest) as err:
        to_titan_embed({"model": "cohere.embed-english-v3", "input": "hi"})
    assert err.value.param == "model"
    with pytest.raises(InvalidRequest) as tokens:
        to_titan_embed({"model": titan, "input": [[1, 2, 3]]})
    assert tokens.value.param == "input"


def test_titan_responses() -> None:
    results = [
        {"embedding": [0.5, -0.25], "inputTextTokenCount": 1},
        {"embedding": [1.0, 0.0], "inputTextTokenCount": 2},
    ]
    out = from_titan_embed(results, "titan-embed", None)
    assert out == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
            {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]},
        ],
        "model": "titan-embed",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    encoded = from_titan_embed(results, "titan-embed", "base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -0.25)
    with pytest.raises(UpstreamUnavailable):
        from_titan_embed([{"inputTextTokenCount": 1}], "titan-embed", None)


# --- model ids in paths, endpoints --------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        MODEL,
        "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        "amazon.titan-embed-text-v2:0",
    ],
)
def test_model_paths_match_botocore(model: str) -> None:
    service = botocore.session.get_session().get_service_model("bedrock-runtime")
    serializer = create_serializer("rest-json")
    for operation, action in (("Converse", "converse"), ("ConverseStream", "converse-stream")):
        request = serializer.serialize_to_request(
            {"modelId": model, "messages": []}, service.operation_model(operation)
        )
        assert model_path(model, action) == request["url_path"]
    assert "%3A" in model_path(model, "converse")


def test_control_plane_endpoint() -> None:
    default = ProviderConfig(name="b", kind="bedrock", region="eu-central-1", locality="external")
    assert default.base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert control_plane_url(default) == "https://bedrock.eu-central-1.amazonaws.com"
    custom = ProviderConfig(
        name="b",
        kind="bedrock",
        region="eu-central-1",
        locality="external",
        base_url="http://127.0.0.1:9/",
    )
    assert control_plane_url(custom) == "http://127.0.0.1:9"

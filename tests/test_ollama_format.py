"""Pure translation between OpenAI's chat format and Ollama's, and the OpenAI SSE decoder."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from switchboard.errors import InvalidRequest, UpstreamUnavailable
from switchboard.providers.ollama_format import (
    OllamaStreamDecoder,
    from_ollama_chat,
    from_ollama_embed,
    to_ollama_chat,
    to_ollama_embed,
)
from switchboard.providers.openai_compat import decode_sse

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image-bytes").decode()


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.1:8b", "messages": messages, **extra}


# -- to_ollama_chat ----------------------------------------------------------------------------


def test_plain_messages_and_roles() -> None:
    out = to_ollama_chat(
        chat(
            [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "dev rules"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None},
            ]
        ),
        stream=True,
    )
    assert out == {
        "model": "llama3.1:8b",
        "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "system", "content": "dev rules"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
        ],
    }
    assert to_ollama_chat(chat([{"role": "user", "content": "x"}]), stream=False)["stream"] is False


def test_content_parts_join_text_and_inline_images() -> None:
    out = to_ollama_chat(
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is "},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG_B64}"},
                        },
                        {"type": "text", "text": "this?"},
                    ],
                }
            ]
        ),
        stream=False,
    )
    (message,) = out["messages"]
    assert message == {"role": "user", "content": "what is this?", "images": [PNG_B64]}
    assert base64.b64decode(message["images"][0]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "url", ["https://example.com/cat.png", "http://127.0.0.1/x.png", "data:image/png,rawbytes"]
)
def test_image_by_url_is_refused(url: str) -> None:
    body = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    with pytest.raises(InvalidRequest) as info:
        to_ollama_chat(body, stream=False)
    assert info.value.param == "messages"
    assert "data:" in info.value.message


def test_tool_calls_and_tool_results() -> None:
    out = to_ollama_chat(
        chat(
            [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"location": "Paris", "days": 2}',
                            },
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
                {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_unknown", "content": "?", "name": "legacy"},
                {"role": "tool", "tool_call_id": "call_unknown", "content": "??"},
            ],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        ),
        stream=False,
    )
    assistant = out["messages"][1]
    assert assistant["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"location": "Paris", "days": 2}}},
        {"function": {"name": "get_time", "arguments": {}}},
    ]
    tools = out["messages"][2:]
    assert [m.get("tool_name") for m in tools] == ["get_time", "get_weather", "legacy", None]
    assert [m["content"] for m in tools] == ["12:00", "sunny", "?", "??"]
    assert all(m["role"] == "tool" for m in tools)
    assert out["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    ]


def test_tool_call_arguments_already_an_object_pass_through() -> None:
    call = {"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
    out = to_ollama_chat(chat([{"role": "assistant", "tool_calls": [call]}]), stream=False)
    assert out["messages"][0]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]


def test_tool_call_arguments_not_json_are_refused() -> None:
    call = {"id": "c", "function": {"name": "f", "arguments": "{not json"}}
    with pytest.raises(InvalidRequest) as info:
        to_ollama_chat(chat([{"role": "assistant", "tool_calls": [call]}]), stream=False)
    assert "'f'" in info.value.message


def test_options_mapping() -> None:
    out = to_ollama_chat(
        chat(
            [{"role": "user", "content": "x"}],
            temperature=0.2,
            top_p=0.9,
            seed=7,
            max_tokens=64,
            frequency_penalty=0.5,
            presence_penalty=0.0,
            stop="END",
            user="ignored",
        ),
        stream=False,
    )
    assert out["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "num_predict": 64,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.0,
        "stop": ["END"],
    }
    assert "user" not in out
    assert "format" not in out


def test_max_completion_tokens_and_stop_list() -> None:
    out = to_ollama_chat(
        chat([{"role": "user", "content": "x"}], max_completion_tokens=10, stop=["a", "b"]),
        stream=False,
    )
    assert out["options"] == {"num_predict": 10, "stop": ["a", "b"]}


def test_no_options_when_none_given() -> None:
    out = to_ollama_chat(
        chat([{"role": "user", "content": "x"}], temperature=None, stop=None), stream=False
    )
    assert "options" not in out


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    msgs = [{"role": "user", "content": "x"}]

    def fmt(response_format: Any) -> Any:
        return to_ollama_chat(chat(msgs, response_format=response_format), stream=False).get(
            "format"
        )

    assert fmt({"type": "json_object"}) == "json"
    assert fmt({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}) == schema
    assert fmt({"type": "json_schema", "json_schema": {"name": "s"}}) == "json"
    assert fmt({"type": "text"}) is None


@pytest.mark.parametrize("n", [2, 5])
def test_more_than_one_choice_is_refused(n: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_ollama_chat(chat([{"role": "user", "content": "x"}], n=n), stream=False)
    assert info.value.param == "n"


def test_one_choice_is_fine() -> None:
    to_ollama_chat(chat([{"role": "user", "content": "x"}], n=1), stream=False)
    to_ollama_chat(chat([{"role": "user", "content": "x"}], n=None), stream=False)


# -- from_ollama_chat --------------------------------------------------------------------------


def test_from_ollama_chat_text() -> None:
    out = from_ollama_chat(
        {
            "model": "llama3.1:8b",
            "message": {"role": "assistant", "content": "Hello there"},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 12,
            "eval_count": 3,
        },
        "my-llama",
    )
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == "my-llama"
    assert isinstance(out["created"], int)
    (choice,) = out["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Hello there"}
    assert choice["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_from_ollama_chat_length_and_missing_counts() -> None:
    out = from_ollama_chat(
        {"message": {"role": "assistant", "content": "cut"}, "done_reason": "length"}, "m"
    )
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_from_ollama_chat_tool_calls() -> None:
    out = from_ollama_chat(
        {
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"location": "Paris"}}},
                    {"function": {"name": "get_time", "arguments": {}}},
                ],
            },
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 9,
        },
        "m",
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    calls = message["tool_calls"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert all(isinstance(c["function"]["arguments"], str) for c in calls)
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"location": "Paris"}
    assert orjson.loads(calls[1]["function"]["arguments"]) == {}
    assert all(c["id"].startswith("call_") for c in calls)
    assert calls[0]["id"] != calls[1]["id"]
    assert all("index" not in c for c in calls)  # index belongs to stream deltas only


def test_from_ollama_chat_thinking() -> None:
    out = from_ollama_chat(
        {"message": {"role": "assistant", "content": "42", "thinking": "hmm"}}, "m"
    )
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "42",
        "reasoning_content": "hmm",
    }


# -- OllamaStreamDecoder -----------------------------------------------------------------------


def ndjson(*objects: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(o) for o in objects]


def test_stream_decoder_text_then_finish_and_usage() -> None:
    decode = OllamaStreamDecoder("my-llama")
    base = {"model": "llama3.1:8b", "created_at": "2025-01-01T00:00:00Z"}

    first = decode(
        ndjson(
            {**base, "message": {"role": "assistant", "content": "Hel"}, "done": False},
            {**base, "message": {"role": "assistant", "content": "lo"}, "done": False},
        )
    )
    second = decode([b"", b"  "])
    third = decode(
        ndjson(
            {**base, "message": {"role": "assistant", "content": "!"}, "done": False},
            {
                **base,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 7,
                "eval_count": 3,
                "total_duration": 123,
            },
        )
    )

    assert second == []
    chunks = first + third
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {"my-llama"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["created"] for c in chunks}) == 1

    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert all("usage" not in c for c in chunks[:-1])


def test_stream_decoder_tool_calls() -> None:
    decode = OllamaStreamDecoder("m")
    chunks = decode(
        ndjson(
            {
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}
                    ],
                },
                "done": False,
            },
            {
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}],
                },
                "done": False,
            },
            {
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 4,
                "eval_count": 20,
            },
        )
    )

    assert len(chunks) == 4
    first, second = (c["choices"][0]["delta"] for c in chunks[:2])
    assert first["role"] == "assistant"
    assert "role" not in second
    assert "content" not in first  # empty content is not sent
    (call0,) = first["tool_calls"]
    (call1,) = second["tool_calls"]
    assert call0["index"] == 0
    assert call1["index"] == 1
    assert call0["type"] == "function"
    assert call0["id"].startswith("call_")
    assert call0["id"] != call1["id"]
    assert call0["function"]["name"] == "get_weather"
    assert orjson.loads(call0["function"]["arguments"]) == {"location": "Paris"}
    assert call1["function"]["name"] == "get_time"
    assert orjson.loads(call1["function"]["arguments"]) == {"tz": "UTC"}
    assert chunks[2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[3]["usage"]["completion_tokens"] == 20


def test_stream_decoder_length_and_role_only_once_even_when_first_line_is_empty() -> None:
    decode = OllamaStreamDecoder("m")
    chunks = decode(
        ndjson(
            {"message": {"role": "assistant", "content": ""}, "done": False},
            {"message": {"role": "assistant", "content": "a"}, "done": False},
            {
                "message": {"role": "assistant", "content": "b"},
                "done": True,
                "done_reason": "length",
            },
        )
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant"}, {"content": "a"}, {"content": "b"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_decoder_error_line() -> None:
    decode = OllamaStreamDecoder("m")
    decode(ndjson({"message": {"role": "assistant", "content": "a"}, "done": False}))
    with pytest.raises(UpstreamUnavailable) as info:
        decode(ndjson({"error": "model runner has unexpectedly stopped"}))
    assert "unexpectedly stopped" in info.value.message


def test_stream_decoder_malformed_line() -> None:
    with pytest.raises(UpstreamUnavailable):
        OllamaStreamDecoder("m")([b'{"message": {"content": "a"'])


# -- embeddings --------------------------------------------------------------------------------


def test_to_ollama_embed() -> None:
    assert to_ollama_embed({"model": "nomic", "input": "hello"}) == {
        "model": "nomic",
        "input": ["hello"],
    }
    assert to_ollama_embed({"model": "nomic", "input": ["a", "b"], "dimensions": 64}) == {
        "model": "nomic",
        "input": ["a", "b"],
        "dimensions": 64,
    }


@pytest.mark.parametrize("bad", [[1, 2, 3], [[1, 2]], ["ok", 5]])
def test_to_ollama_embed_refuses_token_arrays(bad: list[Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_ollama_embed({"model": "nomic", "input": bad})
    assert info.value.param == "input"


def test_from_ollama_embed_floats() -> None:
    data = {"embeddings": [[0.5, -1.25], [3.0, 0.0]], "prompt_eval_count": 6}
    out = from_ollama_embed(data, "emb", None)
    assert out == {
        "object": "list",
        "model": "emb",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.25]},
            {"object": "embedding", "index": 1, "embedding": [3.0, 0.0]},
        ],
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    assert from_ollama_embed(data, "emb", "float")["data"][1]["embedding"] == [3.0, 0.0]


def test_from_ollama_embed_base64_decodes_to_the_same_floats() -> None:
    vectors = [[0.1, -0.2, 0.3, 1e-7, -123.456], [0.0, 1.0, -1.0, 0.5, 2.0]]
    out = from_ollama_embed({"embeddings": vectors}, "emb", "base64")
    assert out["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    for item, vector in zip(out["data"], vectors, strict=True):
        encoded = item["embedding"]
        assert isinstance(encoded, str)
        raw = base64.b64decode(encoded)
        assert len(raw) == 4 * len(vector)
        decoded = struct.unpack(f"<{len(vector)}f", raw)
        assert decoded == pytest.approx(vector, rel=1e-6, abs=1e-12)


# -- decode_sse (OpenAI-compatible streams) ------------------------------------------------------


def test_decode_sse_data_lines_only() -> None:
    chunk1 = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    chunk2 = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "b"}}]}
    lines = [
        b": keep-alive comment",
        b"data: " + orjson.dumps(chunk1),
        b"",
        b"event: message",
        b"data:" + orjson.dumps(chunk2),
        b"data: ",
        b"data: [DONE]",
        b"",
    ]
    assert decode_sse(lines) == [chunk1, chunk2]


def test_decode_sse_keeps_usage_chunk_and_ignores_non_objects() -> None:
    usage = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 1}}
    assert decode_sse([b"data: " + orjson.dumps(usage), b"data: 42", b"data: [1]"]) == [usage]


def test_decode_sse_error_payload() -> None:
    line = b'data: {"error": {"message": "overloaded, try later", "type": "server_error"}}'
    with pytest.raises(UpstreamUnavailable) as info:
        decode_sse([line])
    assert "overloaded, try later" in info.value.message


def test_decode_sse_malformed_json() -> None:
    with pytest.raises(UpstreamUnavailable):
        decode_sse([b'data: {"id": "c1", "choices": ['])

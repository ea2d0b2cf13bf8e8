"""The inbound Ollama API's pure translation: Ollama requests to the gateway's OpenAI format,
OpenAI results and chunk streams back to Ollama's responses and NDJSON lines."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest

from switchboard.api.ollama_format import (
    Timing,
    chat_request,
    chat_response,
    embed_request,
    embed_response,
    embeddings_request,
    embeddings_response,
    generate_request,
    generate_response,
    has_tag,
    load_response,
    name_candidates,
    rfc3339,
    tagged,
)
from switchboard.api.ollama_stream import OllamaStreamEncoder, ndjson_error
from switchboard.errors import InvalidRequest, NotFound, UpstreamUnavailable
from switchboard.providers.base import JSON
from switchboard.providers.ollama_format import to_ollama_chat

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0fake-image").decode()
OTHER = base64.b64encode(b"BMfake-image").decode()
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def chat(messages: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-fake", "messages": messages, **extra}


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def body_of(raw: Any) -> JSON:
    call = chat_request(raw)
    assert call.body is not None
    return call.body


# -- model names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tag", "listed", "candidates"),
    [
        ("gpt-fake", False, "gpt-fake:latest", ["gpt-fake", "gpt-fake:latest"]),
        ("gpt-fake:latest", True, "gpt-fake:latest", ["gpt-fake:latest", "gpt-fake"]),
        ("qwen2.5:7b", True, "qwen2.5:7b", ["qwen2.5:7b"]),
        (
            "registry:5000/team/model",
            False,
            "registry:5000/team/model:latest",
            ["registry:5000/team/model", "registry:5000/team/model:latest"],
        ),
    ],
)
def test_model_names_and_tags(name: str, tag: bool, listed: str, candidates: list[str]) -> None:
    assert has_tag(name) is tag
    assert tagged(name) == listed
    assert name_candidates(name) == candidates


# -- timing ------------------------------------------------------------------------------------


def test_rfc3339_has_nanoseconds_like_go() -> None:
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_timing_splits_the_measured_time_at_the_first_token() -> None:
    timing = Timing.between(10.0, 10.5, 10.1)
    assert timing.fields(7, 3) == {
        "total_duration": 500_000_000,
        "load_duration": 0,
        "prompt_eval_count": 7,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 3,
        "eval_duration": 400_000_000,
    }
    whole = Timing.between(10.0, 10.25).fields(1, 1)
    assert (whole["prompt_eval_duration"], whole["eval_duration"]) == (0, 250_000_000)


# -- /api/chat requests ------------------------------------------------------------------------


def test_chat_streams_by_default_and_keeps_plain_messages() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        user("hi"),
        {"role": "assistant", "content": "hello", "thinking": "they greeted me"},
    ]
    call = chat_request(chat(messages, think=True, keep_alive="5m"))
    assert call.stream is True
    assert call.model == "gpt-fake"
    assert call.body == {
        "model": "gpt-fake",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
    }
    assert chat_request(chat([user()], stream=False)).stream is False


def test_images_become_data_url_parts_with_their_type() -> None:
    body = body_of(
        chat([{"role": "user", "content": "what is this?", "images": [PNG, JPEG, OTHER]}])
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{OTHER}"}},
    ]
    only_image = body_of(chat([{"role": "user", "content": "", "images": [PNG]}]))
    assert only_image["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    ]


def test_tool_calls_get_ids_and_tool_results_answer_them_by_name() -> None:
    messages = [
        user("weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_time", "arguments": {"city": "Rome"}}},
            ],
        },
        {"role": "tool", "content": "13:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    body = body_of(chat(messages, tools=TOOLS))
    assistant, time_result, weather_result = body["messages"][1:]
    assert assistant["content"] is None
    weather, clock = assistant["tool_calls"]
    assert weather["type"] == "function"
    assert weather["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert clock["function"] == {"name": "get_time", "arguments": '{"city":"Rome"}'}
    assert re.fullmatch(r"call_[0-9a-f]{24}", weather["id"])
    assert weather["id"] != clock["id"]
    assert time_result == {"role": "tool", "content": "13:00", "tool_call_id": clock["id"]}
    assert weather_result["tool_call_id"] == weather["id"]
    assert body["tools"] == TOOLS


def test_tool_results_without_names_answer_calls_in_order() -> None:
    messages = [
        user(),
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_kept", "function": {"name": "a", "arguments": '{"x": 1}'}},
                {"function": {"name": "b", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
        {"role": "tool", "content": "3", "tool_call_id": "call_explicit"},
    ]
    out = body_of(chat(messages))["messages"]
    first, second = out[1]["tool_calls"]
    assert first["id"] == "call_kept"
    assert first["function"]["arguments"] == '{"x": 1}'
    assert second["function"]["arguments"] == "{}"
    assert [m["tool_call_id"] for m in out[2:]] == ["call_kept", second["id"], "call_explicit"]


def test_a_tool_result_with_no_call_before_it_still_gets_an_id() -> None:
    out = body_of(chat([user(), {"role": "tool", "content": "x", "tool_name": "t"}]))
    assert out["messages"][1]["tool_call_id"].startswith("call_")


def test_tools_without_a_type_are_functions() -> None:
    tools = [{"function": {"name": "f", "parameters": {}}}]
    assert body_of(chat([user()], tools=tools))["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {}}}
    ]


def test_the_translation_round_trips_through_the_upstream_adapter() -> None:
    """What the Ollama provider sends upstream is what the Ollama client sent us."""
    original = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "look", "images": [PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "snow", "tool_name": "get_weather"},
    ]
    upstream = to_ollama_chat(body_of(chat(original, tools=TOOLS)), stream=False)
    assert upstream["messages"] == original
    assert upstream["tools"] == TOOLS


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", {"type": "json_object"}),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "response",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                },
            },
        ),
        ("", None),
    ],
)
def test_format_becomes_response_format(fmt: Any, expected: JSON | None) -> None:
    assert body_of(chat([user()], format=fmt)).get("response_format") == expected


def test_options_map_to_openai_parameters() -> None:
    options = {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n\n", "END"],
        "num_predict": 50,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "num_ctx": 8192,
        "top_k": 40,
    }
    body = body_of(chat([user()], options=options))
    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
    assert params == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n\n", "END"],
        "max_tokens": 50,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
    }
    assert body_of(chat([user()], options={"stop": "END"}))["stop"] == ["END"]
    for unlimited in (-1, -2, 0):
        assert "max_tokens" not in body_of(chat([user()], options={"num_predict": unlimited}))


def test_empty_messages_only_load_or_unload_the_model() -> None:
    load = chat_request({"model": "m", "messages": []})
    assert (load.body, load.load_reason, load.stream) == (None, "load", True)
    assert chat_request({"model": "m"}).body is None
    assert chat_request({"model": "m", "keep_alive": 0}).load_reason == "unload"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "JSON object"),
        ({"messages": [user()]}, "model is required"),
        (chat([user()], stream="yes"), "stream must be"),
        (chat("hi"), "messages must be a list"),
        (chat(["hi"]), "each message must be an object"),
        (chat([{"role": "wizard", "content": "x"}]), "role must be one of"),
        (chat([{"role": "user", "content": ["x"]}]), "content must be a string"),
        (chat([{"role": "assistant", "content": "x", "images": [PNG]}]), "only user messages"),
        (chat([{"role": "user", "content": "x", "images": [5]}]), "base64 strings"),
        (chat([user()], options=[]), "options must be an object"),
        (chat([user()], options={"stop": 5}), "options.stop"),
        (chat([user()], format="yaml"), "format must be"),
        (chat([user()], tools={}), "tools must be a list"),
        (chat([user()], options={"temperature": "hot"}), "'temperature' must be a number"),
        (
            chat([user(), {"role": "assistant", "tool_calls": [{"function": {}}]}]),
            "function name",
        ),
        (
            chat(
                [
                    user(),
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": 1}}],
                    },
                ]
            ),
            "arguments must be an object",
        ),
    ],
)
def test_bad_chat_requests_are_400(raw: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat_request(raw)
    assert message in err.value.message
    assert err.value.status_code == 400


# -- /api/generate requests --------------------------------------------------------------------


def test_generate_becomes_a_system_and_a_user_message() -> None:
    call = generate_request(
        {
            "model": "gpt-fake:latest",
            "prompt": "describe",
            "system": "be brief",
            "images": [PNG],
            "format": "json",
            "options": {"num_predict": 9},
            "stream": False,
        }
    )
    assert (call.model, call.stream) == ("gpt-fake:latest", False)
    assert call.body == {
        "model": "gpt-fake:latest",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
        "response_format": {"type": "json_object"},
        "max_tokens": 9,
    }
    plain = generate_request({"model": "m", "prompt": "hi"})
    assert plain.stream is True
    assert plain.body is not None
    assert plain.body["messages"] == [{"role": "user", "content": "hi"}]


def test_generate_without_a_prompt_only_loads() -> None:
    assert generate_request({"model": "m"}).body is None
    assert generate_request({"model": "m", "prompt": "", "keep_alive": "0"}).load_reason == (
        "unload"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"raw": True}, "raw prompts are not supported"),
        ({"suffix": "return x"}, "suffix"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1, 2, 3]}, "context is not supported"),
        ({"prompt": 5}, "prompt must be a string"),
        ({"system": ["x"]}, "system must be a string"),
    ],
)
def test_what_generate_cannot_do_is_refused(extra: JSON, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        generate_request({"model": "m", "prompt": "def f():", **extra})
    assert message in err.value.message


def test_generate_accepts_raw_false_and_empty_suffix() -> None:
    call = generate_request({"model": "m", "prompt": "x", "raw": False, "suffix": ""})
    assert call.body is not None


# -- embeddings requests -----------------------------------------------------------------------


def test_embed_requests() -> None:
    one = embed_request({"model": "emb", "input": "alpha", "truncate": True})
    assert (one.model, one.body, one.stream) == ("emb", {"model": "emb", "input": "alpha"}, False)
    many = embed_request({"model": "emb", "input": ["a", "b"], "dimensions": 4})
    assert many.body == {"model": "emb", "input": ["a", "b"], "dimensions": 4}
    for bad in ({"model": "emb"}, {"model": "emb", "input": [1]}, {"model": "emb", "input": []}):
        with pytest.raises(InvalidRequest):
            embed_request(bad)
    with pytest.raises(InvalidRequest):
        embed_request({"model": "emb", "input": "x", "dimensions": -1})


def test_legacy_embeddings_requests() -> None:
    call = embeddings_request({"model": "emb", "prompt": "alpha"})
    assert call.body == {"model": "emb", "input": "alpha"}
    assert embeddings_request({"model": "emb", "prompt": ""}).body is None
    with pytest.raises(InvalidRequest):
        embeddings_request({"model": "emb", "prompt": ["x"]})


# -- responses ---------------------------------------------------------------------------------


def completion(message: JSON, finish: str = "stop", usage: JSON | None = None) -> JSON:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage if usage is not None else {"prompt_tokens": 4, "completion_tokens": 2},
    }


TIMING = Timing(total_ns=3_000_000, prompt_eval_ns=1_000_000)
DURATIONS = {
    "total_duration": 3_000_000,
    "load_duration": 0,
    "prompt_eval_count": 4,
    "prompt_eval_duration": 1_000_000,
    "eval_count": 2,
    "eval_duration": 2_000_000,
}


def test_chat_response() -> None:
    out = chat_response(
        completion({"role": "assistant", "content": "Hi there"}), "gpt-fake:latest", TIMING
    )
    assert CREATED_AT.match(out.pop("created_at"))
    assert out == {
        "model": "gpt-fake:latest",
        "message": {"role": "assistant", "content": "Hi there"},
        "done_reason": "stop",
        "done": True,
        **DURATIONS,
    }
    assert list(out)[:2] == ["model", "message"]


def test_chat_response_with_tool_calls_thinking_and_length() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "need the weather",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    out = chat_response(completion(message, "tool_calls"), "m", TIMING)
    assert out["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": "need the weather",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    }
    assert out["done_reason"] == "stop"
    cut = chat_response(completion({"content": "Hi"}, "length", usage={}), "m", TIMING)
    assert (cut["done_reason"], cut["prompt_eval_count"], cut["eval_count"]) == ("length", 0, 0)


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_arguments_that_are_no_object_are_an_upstream_error(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(UpstreamUnavailable) as err:
        chat_response(completion({"content": None, "tool_calls": [call]}), "m", TIMING)
    assert "'f'" in err.value.message


def test_generate_response() -> None:
    out = generate_response(
        completion({"role": "assistant", "content": "Echo", "reasoning_content": "hm"}),
        "m",
        TIMING,
    )
    assert CREATED_AT.match(out.pop("created_at"))
    assert out == {
        "model": "m",
        "response": "Echo",
        "thinking": "hm",
        "done": True,
        "done_reason": "stop",
        **DURATIONS,
    }


def test_load_responses() -> None:
    chat_load = load_response("m", "chat", "load")
    assert CREATED_AT.match(chat_load.pop("created_at"))
    assert chat_load == {
        "model": "m",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "load",
        "done": True,
    }
    gen = load_response("m", "generate", "unload")
    assert (gen["response"], gen["done_reason"], gen["done"]) == ("", "unload", True)


def test_embed_responses() -> None:
    result = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        ],
        "model": "emb",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert embed_response(result, "emb:latest", TIMING) == {
        "model": "emb:latest",
        "embeddings": [[0.1, 0.2], [0.3, 0.4]],
        "total_duration": 3_000_000,
        "load_duration": 0,
        "prompt_eval_count": 3,
    }
    assert embeddings_response(result) == {"embedding": [0.1, 0.2]}
    assert embeddings_response(None) == {"embedding": []}


# -- the NDJSON stream -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def chunk(delta: JSON, finish: str | None = None, index: int = 0) -> JSON:
    choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "x", "choices": [choice]}


def usage_chunk(prompt: int = 4, completion: int = 3) -> JSON:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def lines(data: bytes) -> list[JSON]:
    assert data == b"" or data.endswith(b"\n")
    out = [orjson.loads(line) for line in data.splitlines()]
    for line in out:
        assert CREATED_AT.match(line.pop("created_at"))
    return out


def test_stream_of_content_ends_with_the_counts() -> None:
    encoder = OllamaStreamEncoder("gpt-fake:latest", shape="chat", started=100.0, clock=Clock())
    first = lines(encoder([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})]))
    assert first == [
        {
            "model": "gpt-fake:latest",
            "message": {"role": "assistant", "content": "Hi"},
            "done": False,
        }
    ]
    second = lines(encoder([chunk({"content": " there"}), chunk({}, "stop"), usage_chunk(4, 3)]))
    assert second == [
        {
            "model": "gpt-fake:latest",
            "message": {"role": "assistant", "content": " there"},
            "done": False,
        },
        {
            "model": "gpt-fake:latest",
            "message": {"role": "assistant", "content": ""},
            "done_reason": "stop",
            "done": True,
            "total_duration": 1_000_000_000,
            "load_duration": 0,
            "prompt_eval_count": 4,
            "prompt_eval_duration": 500_000_000,
            "eval_count": 3,
            "eval_duration": 500_000_000,
        },
    ]
    assert encoder([usage_chunk()]) == b""  # only one final line


def test_stream_tool_calls_are_assembled_from_fragments() -> None:
    encoder = OllamaStreamEncoder("m", shape="chat", started=100.0, clock=Clock())
    opening = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    second = {"index": 1, "id": "call_2", "function": {"name": "get_", "arguments": '{"city"'}}
    assert encoder([chunk({"role": "assistant", "tool_calls": [opening]})]) == b""
    assert encoder([chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]})]) == (
        b""
    )
    assert encoder([chunk({"tool_calls": [second]})]) == b""
    rest = [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        chunk(
            {"tool_calls": [{"index": 1, "function": {"name": "time", "arguments": ':"Rome"}'}}]}
        ),
        chunk({}, "tool_calls"),
    ]
    out = lines(encoder(rest))
    assert out == [
        {
            "model": "m",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "get_time", "arguments": {"city": "Rome"}}},
                ],
            },
            "done": False,
        }
    ]
    final = lines(encoder([usage_chunk(10, 5)]))[0]
    assert (final["done"], final["done_reason"], final["eval_count"]) == (True, "stop", 5)


def test_stream_tool_calls_without_a_finish_are_sent_before_the_final_line() -> None:
    encoder = OllamaStreamEncoder("m", shape="chat", started=100.0, clock=Clock())
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
    out = lines(encoder([chunk({"tool_calls": [call]}), usage_chunk()]))
    assert out[0]["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {}}}]
    assert out[1]["done"] is True


def test_stream_tool_call_with_broken_arguments_fails_the_stream() -> None:
    encoder = OllamaStreamEncoder("m", shape="chat", started=100.0, clock=Clock())
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{oops"}}
    with pytest.raises(UpstreamUnavailable):
        encoder([chunk({"tool_calls": [call]}, "tool_calls")])


def test_generate_stream_shape() -> None:
    encoder = OllamaStreamEncoder("m", shape="generate", started=100.0, clock=Clock())
    out = lines(
        encoder(
            [
                chunk({"role": "assistant", "reasoning_content": "hmm"}),
                chunk({"content": "Echo"}),
                chunk({}, "length"),
                usage_chunk(2, 1),
            ]
        )
    )
    assert out[:2] == [
        {"model": "m", "response": "", "thinking": "hmm", "done": False},
        {"model": "m", "response": "Echo", "done": False},
    ]
    assert list(out[2]) == [
        "model",
        "response",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    assert (out[2]["response"], out[2]["done_reason"], out[2]["eval_count"]) == ("", "length", 1)


def test_stream_ignores_other_choices_and_usage_on_content_chunks() -> None:
    encoder = OllamaStreamEncoder("m", shape="chat", started=100.0, clock=Clock())
    with_usage = {**chunk({"content": "a"}), "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    out = lines(encoder([with_usage, chunk({"content": "other"}, index=1)]))
    assert [line["done"] for line in out] == [False]
    assert out[0]["message"]["content"] == "a"


def test_chat_stream_thinking_goes_in_the_message() -> None:
    encoder = OllamaStreamEncoder("m", shape="chat", started=100.0, clock=Clock())
    out = lines(encoder([chunk({"reasoning_content": "let me see"})]))
    assert out[0]["message"] == {"role": "assistant", "content": "", "thinking": "let me see"}


def test_stream_error_line() -> None:
    line = ndjson_error(NotFound("model 'x' not found"))
    assert line == b'{"error":"model \'x\' not found"}\n'

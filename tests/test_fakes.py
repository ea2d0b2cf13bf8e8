"""The fake upstreams speak the real wire formats: drive them with the official SDKs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from starlette.applications import Starlette

from fakes.behaviour import RecordedRequest
from fakes.ollama_upstream import create_app as create_ollama_app
from fakes.openai_upstream import create_app as create_openai_app
from fakes.server import ServerThread

pytestmark = pytest.mark.slow  # starts real servers on 127.0.0.1

T = TypeVar("T")
API_KEY = "sk-fake-upstream"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_app() -> Starlette:
    return create_openai_app(api_key=API_KEY)


@pytest.fixture(scope="module")
def openai_server(openai_app: Starlette) -> Iterator[ServerThread]:
    with ServerThread(openai_app) as server:
        yield server


@pytest.fixture(scope="module")
def oai(openai_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=openai_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=5.0
    ) as client:
        yield client


@pytest.fixture(scope="module")
def ollama_app() -> Starlette:
    return create_ollama_app()


@pytest.fixture(scope="module")
def ollama_server(ollama_app: Starlette) -> Iterator[ServerThread]:
    with ServerThread(ollama_app) as server:
        yield server


@pytest.fixture(scope="module")
def oll(ollama_server: ServerThread) -> Iterator[ollama.Client]:
    with ollama.Client(host=ollama_server.url, timeout=5.0) as client:
        yield client


def last_request(app: Starlette) -> RecordedRequest:
    requests: list[RecordedRequest] = app.state.requests
    return requests[-1]


def drain(items: Iterable[T], into: list[T]) -> None:
    """Consume ``items`` into ``into``; what arrived before an error stays there."""
    into.extend(items)  # list.extend appends item by item, so partial results survive


# -- OpenAI ------------------------------------------------------------------


def test_openai_chat_non_stream(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.content == "Echo: hello there world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert completion.usage.total_tokens == 9


def test_openai_records_passthrough_fields(oai: openai.OpenAI, openai_app: Starlette) -> None:
    oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": [{"type": "text", "text": "parts work"}]}],
        temperature=0.2,
        max_tokens=7,
        response_format={"type": "json_object"},
    )
    recorded = last_request(openai_app)
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == f"Bearer {API_KEY}"
    assert recorded.body["temperature"] == 0.2
    assert recorded.body["max_tokens"] == 7
    assert recorded.body["response_format"] == {"type": "json_object"}


def test_openai_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert contents == ["Echo: ", "one ", "two ", "three"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_stream_without_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hi"
    assert all(c.choices and c.usage is None for c in chunks)


def test_openai_sse_wire_format(openai_server: ServerThread) -> None:
    response = httpx.post(
        openai_server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 3


def test_openai_tool_call(oai: openai.OpenAI, openai_app: Starlette) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert last_request(openai_app).body["tools"] == [WEATHER_TOOL]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_openai_tool_call_stream(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


def test_openai_tool_round_trip(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny 21C"},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert completion.choices[0].message.content == "Tool result: sunny 21C"


def test_openai_n_choices(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "twice"}], n=2
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert {c.message.content for c in completion.choices} == {"Echo: twice"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4


def test_openai_embeddings(oai: openai.OpenAI, openai_app: Starlette) -> None:
    default = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert last_request(openai_app).body["encoding_format"] == "base64"
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input=["a", "b c"], encoding_format="float"
    )
    assert [d.index for d in default.data] == [0, 1]
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(floats.data[0].embedding) == 8
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == 3


def test_openai_models(oai: openai.OpenAI) -> None:
    assert "gpt-4o-mini" in [m.id for m in oai.models.list()]


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("error-500", openai.InternalServerError),
        ("error-429", openai.RateLimitError),
        ("error-400", openai.BadRequestError),
        ("error-401", openai.AuthenticationError),
    ],
)
def test_openai_error_models(
    oai: openai.OpenAI, model: str, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    if model == "error-429":
        assert caught.value.response.headers["retry-after"] == "1"


def test_openai_wrong_key(openai_server: ServerThread) -> None:
    client = openai.OpenAI(base_url=openai_server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"


def test_openai_invalid_request(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=[])


def test_openai_cut_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="cut-3", messages=[{"role": "user", "content": "a b c d e"}], stream=True
    )
    chunks: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):  # wraps httpx.RemoteProtocolError
        drain(stream, chunks)
    assert [c.choices[0].delta.content for c in chunks] == ["", "Echo: ", "a ", "b "]


def test_openai_slow(oai: openai.OpenAI) -> None:
    started = time.monotonic()
    oai.chat.completions.create(model="slow-200", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started >= 0.2


def test_openai_stall_stream_times_out(openai_server: ServerThread) -> None:
    with openai.OpenAI(
        base_url=openai_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=0.3
    ) as client:
        stream = client.chat.completions.create(
            model="stall", messages=[{"role": "user", "content": "x y"}], stream=True
        )
        chunks: list[ChatCompletionChunk] = []
        with pytest.raises(openai.APITimeoutError):
            drain(stream, chunks)
    assert [c.choices[0].delta.content for c in chunks] == ["", "Echo: "]


# -- Ollama ------------------------------------------------------------------


def test_ollama_chat_non_stream(oll: ollama.Client, ollama_app: Starlette) -> None:
    response = oll.chat(
        model="llama3.2",
        messages=[{"role": "user", "content": "hello world"}],
        stream=False,
        options={"temperature": 0.1, "num_predict": 9},
        format="json",
    )
    assert response.message.role == "assistant"
    assert response.message.content == "Echo: hello world"
    assert response.done
    assert response.done_reason == "stop"
    assert (response.prompt_eval_count, response.eval_count) == (2, 3)
    body = last_request(ollama_app).body
    assert body["options"] == {"temperature": 0.1, "num_predict": 9}
    assert body["format"] == "json"


def test_ollama_chat_stream(oll: ollama.Client) -> None:
    parts = list(
        oll.chat(model="llama3.2", messages=[{"role": "user", "content": "a b"}], stream=True)
    )
    assert [p.message.content for p in parts[:-1]] == ["Echo: ", "a ", "b"]
    assert not any(p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert final.message.content == ""
    assert (final.prompt_eval_count, final.eval_count) == (2, 3)
    assert final.total_duration
    assert final.load_duration
    assert final.eval_duration


def test_ollama_ndjson_wire_format(ollama_server: ServerThread) -> None:
    response = httpx.post(
        ollama_server.url + "/api/chat",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0]["done"] is False
    assert lines[0]["message"] == {"role": "assistant", "content": "Echo: "}
    assert lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 2


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_tools(oll: ollama.Client, stream: bool) -> None:
    messages = [{"role": "user", "content": "Weather?"}]
    if stream:
        parts = list(
            oll.chat(model="llama3.2", messages=messages, tools=[WEATHER_TOOL], stream=True)
        )
        calls = [call for p in parts for call in p.message.tool_calls or []]
        assert parts[-1].done
    else:
        response = oll.chat(model="llama3.2", messages=messages, tools=[WEATHER_TOOL], stream=False)
        calls = list(response.message.tool_calls or [])
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"location": "Paris"}


def test_ollama_tool_result(oll: ollama.Client) -> None:
    response = oll.chat(
        model="llama3.2",
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "tool", "content": "rainy", "tool_name": "get_weather"},
        ],
        tools=[WEATHER_TOOL],
        stream=False,
    )
    assert response.message.content == "Tool result: rainy"


def test_ollama_embed(oll: ollama.Client) -> None:
    single = oll.embed(model="nomic-embed-text", input="a")
    many = oll.embed(model="nomic-embed-text", input=["a", "b c"])
    assert len(single.embeddings) == 1
    assert len(single.embeddings[0]) == 8
    assert many.embeddings[0] == single.embeddings[0]
    assert many.prompt_eval_count == 3


def test_ollama_list_show_version(oll: ollama.Client, ollama_server: ServerThread) -> None:
    models = oll.list().models
    assert "llama3.2:latest" in [m.model for m in models]
    assert models[0].details is not None
    assert models[0].details.family == "llama"
    assert oll.show("llama3.2").capabilities == ["completion", "tools"]
    assert httpx.get(ollama_server.url + "/").text == "Ollama is running"
    assert httpx.get(ollama_server.url + "/api/version").json() == {"version": "0.6.0"}


def test_ollama_missing_model(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        oll.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "missing" not found, try pulling it first'


@pytest.mark.parametrize("status", [500, 429])
def test_ollama_error_models(oll: ollama.Client, status: int) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        oll.chat(model=f"error-{status}", messages=[{"role": "user", "content": "x"}], stream=False)
    assert caught.value.status_code == status


def test_ollama_cut_stream(oll: ollama.Client) -> None:
    stream = oll.chat(model="cut-2", messages=[{"role": "user", "content": "a b c"}], stream=True)
    parts: list[ollama.ChatResponse] = []
    with pytest.raises(httpx.RemoteProtocolError):
        drain(stream, parts)
    assert [p.message.content for p in parts] == ["Echo: ", "a "]

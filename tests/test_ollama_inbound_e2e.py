"""The Ollama surface end to end: the official `ollama` SDK (as Open WebUI's "Ollama connection"
and Ollama clients use the API) against the gateway on a loopback port, reaching the fake
OpenAI-compatible and Ollama upstreams, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from conftest import WEATHER_TOOLS as TOOLS
from conftest import RunningGateway
from fakes.server import ServerThread
from switchboard.metering.usage import UsageEvent

pytestmark = pytest.mark.slow

CHAT_MODELS = ["gpt-fake", "llama-fake"]
PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes"

_clients = contextlib.ExitStack()


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    with _clients:
        yield


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)  # the SDK would send it by itself


def client(gateway: RunningGateway, key: str | None, **headers: str) -> ollama.Client:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    sdk = ollama.Client(host=gateway.url, headers=headers, timeout=10)
    _clients.callback(sdk.close)
    return sdk


@pytest.fixture(scope="module")
def hybrid(gateway: RunningGateway) -> ollama.Client:
    return client(gateway, gateway.new_tenant("ollama-hybrid"))


def last_body(server: ServerThread) -> dict[str, Any]:
    body: dict[str, Any] = server.app.state.requests[-1].body
    return body


# -- probes and models -------------------------------------------------------------------------


def test_probes_answer_without_a_key(gateway: RunningGateway) -> None:
    root = httpx.get(gateway.url + "/", timeout=10)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    head = httpx.head(gateway.url + "/", timeout=10)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len("Ollama is running"))
    version = httpx.get(gateway.url + "/api/version", timeout=10)
    assert version.status_code == 200
    assert version.json() == {"version": "0.6.0"}


def test_list_shows_each_tenants_models_with_tags(gateway: RunningGateway) -> None:
    local = client(gateway, gateway.new_tenant("ollama-local", "local")).list()
    names = {m.model for m in local.models}
    assert {"llama-fake:latest", "mixed:latest", "emb-ollama:latest"} <= names
    assert "gpt-fake:latest" not in names
    assert all(name and name.endswith(":latest") for name in names)
    llama = next(m for m in local.models if m.model == "llama-fake:latest")
    assert llama.size == 0
    assert llama.digest is not None
    assert len(llama.digest) == 64
    assert llama.modified_at is not None
    assert llama.details is not None
    assert llama.details.family == "ollama-fake"
    assert llama.details.format == "switchboard"
    raw = httpx.get(
        gateway.url + "/api/tags",
        headers={"Authorization": f"Bearer {gateway.keys['ollama-local']}"},
        timeout=10,
    ).json()
    entry = next(m for m in raw["models"] if m["model"] == "llama-fake:latest")
    assert entry["name"] == "llama-fake:latest"
    assert set(entry["details"]) == {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    }


def test_show_and_ps(gateway: RunningGateway, hybrid: ollama.Client) -> None:
    for name in ("gpt-fake", "gpt-fake:latest"):
        shown = hybrid.show(name)
        assert shown.details is not None
        assert shown.details.family == "openai-fake"
        assert shown.modelfile is not None
        assert "FROM gpt-fake:latest" in shown.modelfile
        assert shown.capabilities == ["completion", "tools"]
        assert shown.modelinfo is not None
    with pytest.raises(ollama.ResponseError) as err:
        hybrid.show("gpt-99")
    assert (err.value.status_code, err.value.error) == (404, "model 'gpt-99' not found")
    local = client(gateway, gateway.new_tenant("ollama-local-show", "local"))
    with pytest.raises(ollama.ResponseError) as hidden:
        local.show("gpt-fake")
    assert hidden.value.status_code == 404
    assert list(hybrid.ps().models) == []


# -- chat --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat(hybrid: ollama.Client, model: str) -> None:
    reply = hybrid.chat(
        model=f"{model}:latest", messages=[{"role": "user", "content": "hello there"}], stream=False
    )
    assert reply.model == f"{model}:latest"
    assert reply.message.role == "assistant"
    assert reply.message.content == "Echo: hello there"
    assert (reply.done, reply.done_reason) == (True, "stop")
    assert (reply.prompt_eval_count, reply.eval_count) == (2, 3)
    assert reply.total_duration is not None
    assert reply.total_duration > 0
    assert reply.created_at is not None
    assert reply.created_at.endswith("Z")


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream(hybrid: ollama.Client, model: str) -> None:
    parts = list(
        hybrid.chat(
            model=model, messages=[{"role": "user", "content": "count the words here"}], stream=True
        )
    )
    assert "".join(p.message.content or "" for p in parts) == "Echo: count the words here"
    assert len(parts) > 2
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    final = parts[-1]
    assert final.done_reason == "stop"
    assert (final.prompt_eval_count, final.eval_count) == (4, 5)
    assert final.total_duration is not None
    assert final.eval_duration is not None
    assert final.prompt_eval_duration is not None
    assert final.total_duration == final.prompt_eval_duration + final.eval_duration
    assert all(p.model == model for p in parts)


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(
    hybrid: ollama.Client,
    fake_openai: ServerThread,
    fake_ollama: ServerThread,
    model: str,
    stream: bool,
) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        parts = list(hybrid.chat(model=model, messages=messages, tools=TOOLS, stream=True))
        with_calls = [p for p in parts if p.message.tool_calls]
        assert len(with_calls) == 1
        message = with_calls[0].message
        assert parts[-1].done
    else:
        message = hybrid.chat(model=model, messages=messages, tools=TOOLS, stream=False).message
    assert message.tool_calls is not None
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == {"location": "Paris"}

    messages += [message, {"role": "tool", "content": "sunny, 21C", "tool_name": "get_weather"}]
    second = hybrid.chat(model=model, messages=messages, tools=TOOLS, stream=False)
    assert second.message.content == "Tool result: sunny, 21C"
    sent = last_body(fake_openai if model == "gpt-fake" else fake_ollama)["messages"]
    if model == "gpt-fake":  # OpenAI pairs the result with its call by id
        assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
    else:  # and Ollama by the tool's name, as the client sent it
        assert sent[2] == {"role": "tool", "content": "sunny, 21C", "tool_name": "get_weather"}


def test_images_options_and_format_reach_the_upstream(
    hybrid: ollama.Client, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    image = base64.b64encode(PNG).decode()
    messages = [{"role": "user", "content": "what is it?", "images": [PNG]}]
    options = {"temperature": 0.2, "num_predict": 50, "seed": 7, "stop": ["END"], "num_ctx": 4096}
    hybrid.chat(model="gpt-fake", messages=messages, options=options, format="json", stream=False)
    sent = last_body(fake_openai)
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.2, 50, 7)
    assert sent["stop"] == ["END"]
    assert sent["response_format"] == {"type": "json_object"}
    assert "num_ctx" not in sent
    hybrid.chat(model="llama-fake", messages=messages, format={"type": "object"}, stream=False)
    upstream = last_body(fake_ollama)
    assert upstream["messages"][0]["images"] == [image]
    assert upstream["format"] == {"type": "object"}


# -- generate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_generate(hybrid: ollama.Client, model: str) -> None:
    reply = hybrid.generate(model=model, prompt="hello there", system="be brief", stream=False)
    assert reply.response == "Echo: hello there"
    assert (reply.done, reply.done_reason) == (True, "stop")
    assert (reply.prompt_eval_count, reply.eval_count) == (4, 3)
    parts = list(hybrid.generate(model=model, prompt="one two three", stream=True))
    assert "".join(p.response or "" for p in parts) == "Echo: one two three"
    assert parts[-1].done
    assert parts[-1].eval_count == 4
    assert not any(p.done for p in parts[:-1])


def test_generate_and_chat_without_input_only_load(hybrid: ollama.Client) -> None:
    loaded = hybrid.generate(model="gpt-fake", prompt="", stream=False)
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    unloaded = hybrid.chat(model="llama-fake", messages=[], keep_alive=0, stream=False)
    assert unloaded.done_reason == "unload"


def test_generate_refuses_what_chat_models_cannot_do(hybrid: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        hybrid.generate(model="gpt-fake", prompt="def f(", suffix="return 1", stream=False)
    assert err.value.status_code == 400
    assert "suffix" in err.value.error


# -- embeddings --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["emb-openai", "emb-ollama"])
def test_embed_and_legacy_embeddings(hybrid: ollama.Client, model: str) -> None:
    result = hybrid.embed(model=model, input=["alpha", "beta gamma"])
    assert result.model == model
    assert len(result.embeddings) == 2
    assert all(len(vector) == 8 for vector in result.embeddings)
    assert result.embeddings[0] != result.embeddings[1]
    assert result.prompt_eval_count == 3
    single = hybrid.embed(model=f"{model}:latest", input="alpha")
    assert list(single.embeddings[0]) == list(result.embeddings[0])
    legacy = hybrid.embeddings(model=model, prompt="alpha")
    assert list(legacy.embedding) == list(result.embeddings[0])


# -- errors, always {"error": "..."} -----------------------------------------------------------


def test_errors_have_ollamas_shape_and_status(gateway: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client(gateway, None).list()
    assert missing.value.status_code == 401
    assert "missing API key" in missing.value.error
    with pytest.raises(ollama.ResponseError) as wrong:
        client(gateway, "sk-sb-not-a-key").chat(model="gpt-fake", messages=[], stream=False)
    assert wrong.value.status_code == 401

    local = client(gateway, gateway.new_tenant("ollama-sovereign", "local"))
    with pytest.raises(ollama.ResponseError) as forbidden:
        local.chat(model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=False)
    assert forbidden.value.status_code == 403
    assert "usage mode" in forbidden.value.error
    with pytest.raises(ollama.ResponseError) as forbidden_load:
        local.generate(model="gpt-fake", prompt="", stream=False)
    assert forbidden_load.value.status_code == 403

    hybrid = client(gateway, gateway.keys.get("ollama-hybrid") or gateway.new_tenant("o-h"))
    with pytest.raises(ollama.ResponseError) as unknown:
        hybrid.chat(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert (unknown.value.status_code, unknown.value.error) == (404, "model 'gpt-99' not found")
    broken_messages = [{"role": "user", "content": "x"}]
    with pytest.raises(ollama.ResponseError) as broken:
        hybrid.chat(model="broken", messages=broken_messages, stream=False)
    with pytest.raises(ollama.ResponseError) as broken_stream:
        list(hybrid.chat(model="broken", messages=broken_messages, stream=True))
    for error in (broken.value, broken_stream.value):
        assert error.status_code == 502
        assert "sk-upstream-secret" not in error.error
    with pytest.raises(ollama.ResponseError) as unsupported:
        hybrid.pull("llama3.2")
    assert unsupported.value.status_code == 501
    assert "not supported" in unsupported.value.error


def test_a_stream_broken_midway_ends_with_an_error_line(hybrid: ollama.Client) -> None:
    received: list[Any] = []
    stream = hybrid.chat(
        model="cut", messages=[{"role": "user", "content": "one two three four five"}], stream=True
    )

    def consume() -> None:
        received.extend(stream)

    with pytest.raises(ollama.ResponseError) as err:
        consume()
    assert "broke off" in err.value.error
    assert sum(1 for part in received if part.message.content) == 3


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", "/api/chat", b"{not json", 400),
        ("POST", "/api/chat", b'{"model": "gpt-fake", "messages": "hi"}', 400),
        ("GET", "/api/chat", b"", 405),
        ("GET", "/api/nope", b"", 404),
        ("POST", "/api/create", b"{}", 501),
        ("DELETE", "/api/delete", b"{}", 501),
        ("POST", "/api/copy", b"{}", 501),
        ("POST", "/api/push", b"{}", 501),
    ],
)
def test_raw_errors(
    gateway: RunningGateway,
    hybrid: ollama.Client,
    method: str,
    path: str,
    content: bytes,
    status: int,
) -> None:
    response = httpx.request(
        method,
        gateway.url + path,
        content=content,
        headers={"Authorization": f"Bearer {gateway.keys['ollama-hybrid']}"},
        timeout=10,
    )
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"]


# -- metering ----------------------------------------------------------------------------------


@pytest.fixture
def recorded(gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> list[UsageEvent]:
    """Every usage event the gateway records while the test runs (the admin usage report has
    no endpoint column; the stored rows are checked through it as well)."""
    recorder = gateway.app.state.runtime.gateway.recorder
    events: list[UsageEvent] = []
    record = recorder.record

    def capture(event: UsageEvent) -> None:
        events.append(event)
        record(event)

    monkeypatch.setattr(recorder, "record", capture)
    return events


def test_every_request_is_metered_once_with_the_open_webui_user(
    gateway: RunningGateway, recorded: list[UsageEvent]
) -> None:
    key = gateway.new_tenant("ollama-metered")
    sdk = client(gateway, key, **{"X-OpenWebUI-User-Id": "owui-42", "X-OpenWebUI-User-Name": "A"})
    message = [{"role": "user", "content": "a b c"}]
    sdk.chat(model="gpt-fake", messages=message, stream=False)
    assert list(sdk.chat(model="llama-fake", messages=message, stream=True))[-1].done
    sdk.generate(model="gpt-fake", prompt="d e", stream=False)
    assert list(sdk.generate(model="llama-fake", prompt="d e", stream=True))[-1].done
    sdk.embed(model="emb-openai", input="x y z")
    sdk.embeddings(model="emb-ollama", prompt="x y")
    with pytest.raises(ollama.ResponseError):
        sdk.chat(model="gpt-99", messages=message, stream=False)
    sdk.list()
    sdk.show("gpt-fake")  # listing and showing models is not metered

    rows = gateway.usage("ollama-metered", at_least=7)
    assert len(rows) == 7
    assert len({r["request_id"] for r in rows}) == 7
    assert all(r["user_id"] == "owui-42" for r in rows)
    events = [e for e in recorded if e.request_id in {r["request_id"] for r in rows}]
    assert sorted((e.endpoint, e.model, e.stream) for e in events) == [
        ("ollama.chat", "gpt-99", False),
        ("ollama.chat", "gpt-fake", False),
        ("ollama.chat", "llama-fake", True),
        ("ollama.embed", "emb-ollama", False),
        ("ollama.embed", "emb-openai", False),
        ("ollama.generate", "gpt-fake", False),
        ("ollama.generate", "llama-fake", True),
    ]
    assert len(recorded) == 7  # nothing else was recorded: not the model listing or show
    by = {(r["model"], r["stream"]): r for r in rows}
    chat = by[("gpt-fake", False)]
    assert chat["provider"] == "openai-fake"
    assert {(r["tokens_input"], r["tokens_output"], r["status"]) for r in rows} == {
        (3, 4, 200),  # chat "a b c" -> "Echo: a b c"
        (2, 3, 200),  # generate "d e" -> "Echo: d e"
        (3, 0, 200),  # embed "x y z"
        (2, 0, 200),  # embeddings "x y"
        (0, 0, 404),  # gpt-99
    }
    assert by[("gpt-99", False)]["status"] == 404


def test_usage_without_the_open_webui_header_has_no_user(gateway: RunningGateway) -> None:
    sdk = client(gateway, gateway.new_tenant("ollama-anonymous"))
    sdk.chat(model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=False)
    rows = gateway.usage("ollama-anonymous", at_least=1)
    assert [(r["model"], r["user_id"]) for r in rows] == [("gpt-fake", None)]

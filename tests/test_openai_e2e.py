"""The OpenAI surface end to end: the official `openai` SDK against the gateway on a loopback
port, over the fake OpenAI-compatible and Ollama upstreams, on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from conftest import ADMIN_KEY, RunningGateway
from conftest import WEATHER_TOOLS as TOOLS
from fakes.server import ServerThread

pytestmark = pytest.mark.slow

CHAT_MODELS = ["gpt-fake", "llama-fake"]


_clients: list[openai.OpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(gateway: RunningGateway, key: str, **kwargs: Any) -> openai.OpenAI:
    sdk = openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10, **kwargs
    )
    _clients.append(sdk)
    return sdk


@pytest.fixture(scope="module")
def hybrid(gateway: RunningGateway) -> openai.OpenAI:
    return client(gateway, gateway.new_tenant("hybrid"))


def test_models_lists_what_each_usage_mode_may_use(gateway: RunningGateway) -> None:
    local = client(gateway, gateway.new_tenant("local-only", "local"))
    external = client(gateway, gateway.new_tenant("external-only", "external"))
    hybrid = client(gateway, gateway.new_tenant("both", "hybrid"))
    local_ids = {m.id for m in local.models.list()}
    external_ids = {m.id for m in external.models.list()}
    hybrid_ids = {m.id for m in hybrid.models.list()}
    assert {"llama-fake", "mixed", "emb-ollama"} <= local_ids
    assert not {"gpt-fake", "emb-openai", "unreachable"} & local_ids
    assert {"gpt-fake", "mixed", "emb-openai"} <= external_ids
    assert not {"llama-fake", "emb-ollama"} & external_ids
    assert hybrid_ids == local_ids | external_ids
    assert local.models.retrieve("llama-fake").id == "llama-fake"
    with pytest.raises(openai.NotFoundError):
        local.models.retrieve("gpt-fake")


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_completion(hybrid: openai.OpenAI, model: str) -> None:
    reply = hybrid.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}]
    )
    assert reply.model == model
    assert reply.choices[0].message.content == "Echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 2
    assert reply.usage.completion_tokens == 3


def test_parameters_reach_the_upstream_unchanged(
    hybrid: openai.OpenAI, fake_openai: ServerThread
) -> None:
    requests = fake_openai.app.state.requests
    before = len(requests)
    reply = hybrid.chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.2,
        max_tokens=50,
        n=2,
        response_format={"type": "json_object"},
        seed=7,
    )
    assert len(reply.choices) == 2
    sent = requests[before].body
    assert sent["model"] == "gpt-4o-mini"
    assert (sent["temperature"], sent["max_tokens"], sent["n"], sent["seed"]) == (0.2, 50, 2, 7)
    assert sent["response_format"] == {"type": "json_object"}
    headers = requests[before].headers
    assert headers["authorization"] == "Bearer sk-upstream-secret"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_with_usage(hybrid: openai.OpenAI, model: str) -> None:
    stream = hybrid.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "count the words here"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: count the words here"
    assert all(c.model == model for c in chunks)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_without_usage_hides_the_gateways_usage_chunk(
    hybrid: openai.OpenAI, model: str
) -> None:
    chunks = list(
        hybrid.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hi"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_tool_call_round_trip(hybrid: openai.OpenAI, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = hybrid.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments.replace(" ", "") == '{"location":"Paris"}'
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = hybrid.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Tool result: sunny, 21C"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_streamed_tool_call(hybrid: openai.OpenAI, model: str) -> None:
    stream = hybrid.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=TOOLS,
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
    assert arguments.replace(" ", "") == '{"location":"Paris"}'
    assert finish == "tool_calls"


@pytest.mark.parametrize("model", ["emb-openai", "emb-ollama"])
@pytest.mark.parametrize("encoding", ["float", None])
def test_embeddings(hybrid: openai.OpenAI, model: str, encoding: str | None) -> None:
    kwargs: dict[str, Any] = {"encoding_format": encoding} if encoding else {}
    result = hybrid.embeddings.create(model=model, input=["alpha", "beta gamma"], **kwargs)
    assert result.model == model
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 3


# --- errors, each in OpenAI's shape and status --------------------------------------------


def _raw(
    gateway: RunningGateway, key: str | None, content: bytes, **headers: str
) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(
        gateway.url + "/v1/chat/completions", content=content, headers=headers, timeout=10
    )


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_authentication_errors(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as bad:
        client(gateway, "sk-sb-not-a-key").models.list()
    assert bad.value.code == "invalid_api_key"
    missing = _raw(gateway, None, b"{}")
    assert missing.status_code == 401
    assert _error(missing)["code"] == "missing_api_key"
    basic = _raw(gateway, None, b"{}", Authorization="Basic abc")
    assert basic.status_code == 401


def test_revoked_key_stops_working_within_the_cache_ttl(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("revokee")
    sdk = client(gateway, key)
    assert sdk.models.list().data
    tenant = gateway.keys["revokee:slug"]
    key_id = gateway.admin("GET", f"/admin/v1/tenants/{tenant}/keys").json()["data"][0]["id"]
    assert gateway.admin("POST", f"/admin/v1/keys/{key_id}/revoke").status_code == 200
    time.sleep(gateway.settings.key_cache_ttl_seconds + 0.1)
    with pytest.raises(openai.AuthenticationError) as err:
        sdk.models.list()
    assert err.value.code == "revoked_api_key"


def test_expired_key_is_refused(gateway: RunningGateway) -> None:
    gateway.new_tenant("expiring")
    tenant = gateway.keys["expiring:slug"]
    created = gateway.admin(
        "POST", f"/admin/v1/tenants/{tenant}/keys", json={"expires_in_days": 1 / 86400}
    )
    sdk = client(gateway, created.json()["key"])
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError) as err:
        sdk.models.list()
    assert err.value.code == "expired_api_key"


def test_tenant_header_must_match_the_key(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("header")
    other = gateway.new_tenant("header-other")
    slug = gateway.keys["header:slug"]
    ok = client(gateway, key, default_headers={"X-Tenant-Id": slug})
    assert ok.models.list().data
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(
            gateway, key, default_headers={"X-Tenant-Id": gateway.keys["header-other:slug"]}
        ).models.list()
    assert err.value.code == "tenant_mismatch"
    assert other != key


def test_local_tenant_can_never_reach_an_external_model(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    local = client(gateway, gateway.new_tenant("sovereign", "local"))
    requests = fake_openai.app.state.requests
    before = len(requests)
    with pytest.raises(openai.PermissionDeniedError) as err:
        local.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_allowed"
    assert "usage mode" in err.value.message
    with pytest.raises(openai.PermissionDeniedError):
        local.embeddings.create(model="emb-openai", input="x")
    # A model with a local and an external deployment is served locally.
    reply = local.chat.completions.create(
        model="mixed", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Echo: hi"
    assert len(requests) == before


def test_external_tenant_never_reaches_a_local_model(gateway: RunningGateway) -> None:
    external = client(gateway, gateway.new_tenant("cloudy", "external"))
    with pytest.raises(openai.PermissionDeniedError):
        external.chat.completions.create(
            model="llama-fake", messages=[{"role": "user", "content": "x"}]
        )


def test_unknown_model_is_404(hybrid: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        hybrid.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "gpt-fake", "messages": [', None),
        (b"[]", None),
        (b"", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-fake"}', "messages"),
        (b'{"model": "gpt-fake", "messages": []}', "messages"),
        (
            b'{"model": "gpt-fake", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages[0].role",
        ),
        (
            b'{"model": "gpt-fake", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
        ),
        (
            b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            "temperature",
        ),
        (
            b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
        ),
        (b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
        (
            b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}',
            "tools[0]",
        ),
        (
            b'{"model": "gpt-fake", "messages": [{"role": "tool", "content": "x"}]}',
            "messages[0].tool_call_id",
        ),
    ],
)
def test_bad_bodies_get_a_precise_400(
    gateway: RunningGateway, body: bytes, param: str | None
) -> None:
    key = gateway.keys.get("bad-input") or gateway.new_tenant("bad-input")
    response = _raw(gateway, key, body, **{"Content-Type": "application/json"})
    assert response.status_code == 400
    error = _error(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_huge_body_is_413(gateway: RunningGateway) -> None:
    key = gateway.keys.get("bad-input") or gateway.new_tenant("bad-input")
    content = (
        b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "'
        + b"x" * 300_000
        + b'"}]}'
    )
    response = _raw(gateway, key, content)
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("model", "status", "error_class"),
    [
        ("broken", 502, openai.InternalServerError),
        ("unreachable", 502, openai.InternalServerError),
        ("slow", 504, openai.InternalServerError),
        ("limited", 429, openai.RateLimitError),
        ("upstream-rejects", 400, openai.BadRequestError),
    ],
)
def test_upstream_failures_map_to_openai_errors(
    hybrid: openai.OpenAI, model: str, status: int, error_class: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_class) as err:
        hybrid.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == status
    if status == 429:
        assert err.value.response.headers["retry-after"] == "1"
    assert "sk-upstream-secret" not in err.value.response.text


def test_stream_broken_by_the_upstream_ends_with_an_error_event(hybrid: openai.OpenAI) -> None:
    stream = hybrid.chat.completions.create(
        model="cut", messages=[{"role": "user", "content": "one two three four five"}], stream=True
    )
    received: list[Any] = []

    def consume() -> None:
        received.extend(stream)

    with pytest.raises(openai.APIError) as err:
        consume()
    assert "broke off" in str(err.value.message)
    assert sum(1 for c in received if c.choices and c.choices[0].delta.content) == 3


# --- metering: exactly one usage event per request ----------------------------------------


def test_every_request_is_metered_once(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("metered")
    sdk = client(gateway, key)
    ok = sdk.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=[{"role": "user", "content": "a b c"}], user="alice"
    )
    request_ids = [ok.headers["x-request-id"]]
    stream = sdk.chat.completions.create(
        model="llama-fake", messages=[{"role": "user", "content": "d e"}], stream=True
    )
    assert len(list(stream)) > 1
    emb = sdk.embeddings.with_raw_response.create(model="emb-openai", input="x y z")
    request_ids.append(emb.headers["x-request-id"])
    for model in ("broken", "gpt-99"):
        with pytest.raises(openai.APIStatusError):
            sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert _raw(gateway, key, b"{not json").status_code == 400

    rows = gateway.usage("metered", at_least=6)
    assert len(rows) == 6
    assert len({r["request_id"] for r in rows}) == 6
    assert set(request_ids) <= {r["request_id"] for r in rows}
    by_model = {r["model"]: r for r in rows}
    chat = by_model["gpt-fake"]
    assert (chat["tokens_input"], chat["tokens_output"], chat["status"]) == (3, 4, 200)
    assert chat["provider"] == "openai-fake"
    assert chat["user_id"] == "alice"
    assert chat["cost_usd"] == pytest.approx((3 * 0.15 + 4 * 0.60) / 1e6)
    local = by_model["llama-fake"]
    assert (local["tokens_input"], local["tokens_output"], local["cost_usd"]) == (2, 3, 0)
    assert local["stream"] is True
    embedding = by_model["emb-openai"]
    assert (embedding["tokens_input"], embedding["tokens_output"]) == (3, 0)
    assert by_model["broken"]["status"] == 502
    assert "500" in by_model["broken"]["error"]
    assert by_model["gpt-99"]["status"] == 404
    assert by_model[""]["status"] == 400
    assert all(r["latency_ms"] >= 0 for r in rows)


@pytest.mark.parametrize("model", ["stall", "ollama-stall"])
def test_client_disconnect_cancels_the_upstream_and_is_metered(
    gateway: RunningGateway, fake_openai: ServerThread, fake_ollama: ServerThread, model: str
) -> None:
    tenant = f"impatient-{model}"
    key = gateway.new_tenant(tenant)
    state = (fake_ollama if model.startswith("ollama") else fake_openai).app.state
    disconnects = state.disconnects
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go on"}]}
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"content":"Echo' in line:
                break
    # The fake upstream pauses for 30 s after the first word unless its client goes away.
    deadline = time.monotonic() + 5
    while state.disconnects == disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.disconnects == disconnects + 1
    rows = gateway.usage(tenant, at_least=1)
    assert len(rows) == 1
    assert rows[0]["status"] == 499
    assert rows[0]["tokens_output"] >= 1
    assert rows[0]["latency_ms"] < 5000


def test_cut_stream_counts_what_was_streamed(gateway: RunningGateway) -> None:
    sdk = client(gateway, gateway.new_tenant("cut-short"))
    with pytest.raises(openai.APIError):
        list(
            sdk.chat.completions.create(
                model="ollama-cut",
                messages=[{"role": "user", "content": "one two three four five six"}],
                stream=True,
            )
        )
    rows = gateway.usage("cut-short", at_least=1)
    assert len(rows) == 1
    assert rows[0]["status"] == 502
    assert rows[0]["tokens_output"] == 3


def test_tenants_cannot_see_each_other(gateway: RunningGateway) -> None:
    key_a = gateway.new_tenant("tenant-a", "local")
    key_b = gateway.new_tenant("tenant-b", "external")
    sdk_a, sdk_b = client(gateway, key_a), client(gateway, key_b)
    sdk_b.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "b"}])
    assert "gpt-fake" not in {m.id for m in sdk_a.models.list()}
    assert gateway.usage("tenant-a", at_least=0, timeout=0) == []
    assert len(gateway.usage("tenant-b", at_least=1)) == 1
    # A tenant key is no admin key: it cannot list keys or usage of anyone.
    slug_b = gateway.keys["tenant-b:slug"]
    for path in (f"/admin/v1/tenants/{slug_b}/keys", f"/admin/v1/tenants/{slug_b}/usage"):
        response = httpx.get(
            gateway.url + path, headers={"Authorization": f"Bearer {key_a}"}, timeout=10
        )
        assert response.status_code == 401
    # Naming the other tenant in X-Tenant-Id does not borrow its access.
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, key_a, default_headers={"X-Tenant-Id": slug_b}).chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "x"}]
        )


def test_secrets_never_reach_the_logs(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    key = gateway.new_tenant("quiet")
    sdk = client(gateway, key)
    with caplog.at_level(logging.DEBUG):
        sdk.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "x"}])
        for model in ("broken", "unreachable", "upstream-rejects"):
            with pytest.raises(openai.APIStatusError):
                sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}]
                )
        gateway.admin("GET", "/admin/v1/models")
        gateway.usage("quiet", at_least=4)
    server_side = [r for r in caplog.records if r.name.startswith("switchboard")]
    assert server_side, "the gateway logged nothing: this test would prove nothing"
    for secret in ("sk-upstream-secret", key, ADMIN_KEY):
        assert secret not in caplog.text

"""Routing under faults, end to end: the gateway on a loopback port, fake upstreams that fail
on cue, and the official openai SDK as the client. Every fault must stay the gateway's problem,
never the tenant's, and every client request must leave exactly one usage event."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import RunningGateway, start_gateway
from fakes.server import ServerThread
from switchboard.config import parse_config

pytestmark = pytest.mark.slow


def routing_config(openai_url: str, ollama_url: str) -> str:
    upstream = f"base_url: {openai_url}/v1, api_key: sk-upstream-secret, locality: external"
    return f"""
router:
  retries: 2
  backoff_base_seconds: 0.01
  backoff_max_seconds: 2
  breaker: {{failure_threshold: 3, cooldown_seconds: 60}}
providers:
  - {{name: up-a, kind: openai, {upstream}}}
  - {{name: up-b, kind: openai, {upstream}}}
  - {{name: quick, kind: openai, {upstream}, first_byte_timeout: 0.3, read_timeout: 0.5}}
  # 1.5 s of silence cuts a stream: far beyond the fake's own gap between chunks, even on a
  # loaded 2-core CI box, so only the deliberate stall trips it.
  - {{name: stall-cutter, kind: openai, {upstream}, read_timeout: 1.5}}
  - {{name: refused, kind: openai, base_url: "http://127.0.0.1:9/v1", locality: external,
      connect_timeout: 1}}
  - {{name: local-ollama, kind: ollama, base_url: "{ollama_url}", locality: local}}
models:
  - name: ok
    deployments: [{{provider: up-b, model: gpt-4o-mini}}]
  - name: failover
    deployments:
      - {{provider: up-a, model: error-500, weight: 1000}}
      - {{provider: up-b, model: gpt-4o-mini}}
  - name: flaky
    deployments: [{{provider: up-a, model: flaky-model}}]
  - name: throttled
    deployments: [{{provider: up-a, model: throttled-model}}]
  - name: refused-then-fallback
    deployments: [{{provider: refused, model: gpt-4o}}]
    fallbacks: [ok]
  - name: local-first
    deployments: [{{provider: local-ollama, model: error-500}}]
    fallbacks: [ok]
  - name: slow-first-byte
    deployments:
      - {{provider: quick, model: slow-2000, weight: 1000}}
      - {{provider: up-b, model: gpt-4o-mini}}
  - name: stall-mid-stream
    deployments: [{{provider: stall-cutter, model: stall}}]
  - name: reset-mid-stream
    deployments: [{{provider: up-a, model: cut-3}}]
  - name: always-down
    deployments: [{{provider: up-a, model: error-503}}]
  - name: usage-ignored
    deployments: [{{provider: up-b, model: no-usage}}]
"""


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: ServerThread, fake_ollama: ServerThread
) -> Iterator[RunningGateway]:
    data_dir: Path = tmp_path_factory.mktemp("routing")
    config = parse_config(routing_config(fake_openai.url, fake_ollama.url), source="<routing>")
    server, app = start_gateway(data_dir, f"sqlite+aiosqlite:///{data_dir / 'gw.db'}", config)
    with server:
        yield RunningGateway(url=server.url, app=app, settings=app.state.runtime.settings)


@pytest.fixture(scope="module")
def sdk(routed: RunningGateway) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=routed.url + "/v1", api_key=routed.new_tenant("routed"), max_retries=0, timeout=20
    )
    yield client
    client.close()


def ask(sdk: openai.OpenAI, model: str) -> Any:
    return sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there"}]
    )


def upstream_calls(fake: ServerThread, model: str) -> int:
    return sum(
        1
        for r in fake.app.state.requests
        if isinstance(r.body, dict) and r.body.get("model") == model
    )


def test_failover_to_a_healthy_deployment(sdk: openai.OpenAI, routed: RunningGateway) -> None:
    raw = ask(sdk, "failover")
    assert raw.parse().choices[0].message.content == "Echo: hello there"
    assert raw.headers["x-switchboard-provider"] == "up-b"
    assert raw.headers["x-switchboard-deployment"] == "gpt-4o-mini"
    assert int(raw.headers["x-switchboard-attempts"]) == 2


def test_retries_the_same_deployment_until_it_answers(
    sdk: openai.OpenAI, routed: RunningGateway, fake_openai: ServerThread
) -> None:
    fake_openai.app.state.failures["flaky-model"] = [500, 503]
    raw = ask(sdk, "flaky")
    assert raw.parse().choices[0].message.content == "Echo: hello there"
    assert raw.headers["x-switchboard-attempts"] == "3"
    row = routed.usage_of("routed", raw.headers["x-request-id"])
    assert row["attempts"] == 3
    assert row["status"] == 200


def test_retry_after_is_honoured(sdk: openai.OpenAI, fake_openai: ServerThread) -> None:
    fake_openai.app.state.failures["throttled-model"] = [429]
    started = time.monotonic()
    raw = ask(sdk, "throttled")
    assert raw.headers["x-switchboard-attempts"] == "2"
    assert time.monotonic() - started >= 1.0  # the upstream said Retry-After: 1


def test_connection_refused_falls_back_to_another_model(sdk: openai.OpenAI) -> None:
    raw = ask(sdk, "refused-then-fallback")
    reply = raw.parse()
    assert reply.model == "ok"
    assert reply.choices[0].message.content == "Echo: hello there"
    assert raw.headers["x-switchboard-provider"] == "up-b"


def test_a_local_tenant_is_never_rescued_by_an_external_fallback(
    routed: RunningGateway, fake_openai: ServerThread
) -> None:
    local = openai.OpenAI(
        base_url=routed.url + "/v1", api_key=routed.new_tenant("on-prem", "local"), max_retries=0
    )
    hybrid = openai.OpenAI(
        base_url=routed.url + "/v1", api_key=routed.new_tenant("mixed-use"), max_retries=0
    )
    try:
        before = upstream_calls(fake_openai, "gpt-4o-mini")
        with pytest.raises(openai.InternalServerError) as err:
            local.chat.completions.create(
                model="local-first", messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.status_code == 502
        assert upstream_calls(fake_openai, "gpt-4o-mini") == before
        reply = hybrid.chat.completions.create(
            model="local-first", messages=[{"role": "user", "content": "x"}]
        )
        assert reply.model == "ok"
    finally:
        local.close()
        hybrid.close()
    rows = routed.usage("on-prem", at_least=1)
    assert len(rows) == 1
    assert rows[0]["attempts"] == 3
    assert "up-b" not in (rows[0]["route"] or "")


@pytest.mark.parametrize("stream", [False, True])
def test_slow_first_byte_moves_on_without_duplicating_output(
    sdk: openai.OpenAI, stream: bool
) -> None:
    if not stream:
        raw = ask(sdk, "slow-first-byte")
        assert raw.headers["x-switchboard-provider"] == "up-b"
        assert raw.parse().choices[0].message.content == "Echo: hello there"
        return
    chunks = list(
        sdk.chat.completions.create(
            model="slow-first-byte",
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there"  # exactly once: nothing from the slow attempt


def test_a_stream_that_stalls_is_cut_with_an_error_event(
    sdk: openai.OpenAI, routed: RunningGateway
) -> None:
    received: list[Any] = []
    stream = sdk.chat.completions.create(
        model="stall-mid-stream", messages=[{"role": "user", "content": "go on"}], stream=True
    )

    def consume() -> None:
        received.extend(stream)

    started = time.monotonic()
    with pytest.raises(openai.APIError) as err:
        consume()
    assert time.monotonic() - started < 5
    assert "stalled" in str(err.value.message)
    assert any(c.choices and c.choices[0].delta.content for c in received)


def test_a_stream_reset_mid_way_is_not_retried(
    sdk: openai.OpenAI, fake_openai: ServerThread
) -> None:
    before = upstream_calls(fake_openai, "cut-3")
    stream = sdk.chat.completions.create(
        model="reset-mid-stream",
        messages=[{"role": "user", "content": "one two three four five"}],
        stream=True,
    )
    received: list[Any] = []

    def consume() -> None:
        received.extend(stream)

    with pytest.raises(openai.APIError):
        consume()
    assert sum(1 for c in received if c.choices and c.choices[0].delta.content) == 3
    assert upstream_calls(fake_openai, "cut-3") == before + 1


def test_the_breaker_opens_and_shows_in_the_admin_api(
    sdk: openai.OpenAI, routed: RunningGateway, fake_openai: ServerThread
) -> None:
    before = upstream_calls(fake_openai, "error-503")  # other suites share the fake
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(
            model="always-down", messages=[{"role": "user", "content": "x"}]
        )
    calls = upstream_calls(fake_openai, "error-503")
    assert calls - before == 3  # one attempt and two retries, then the breaker is open
    with pytest.raises(openai.InternalServerError) as err:
        sdk.chat.completions.create(
            model="always-down", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.code == "circuit_open"
    assert upstream_calls(fake_openai, "error-503") == calls
    state = routed.admin("GET", "/admin/v1/routing").json()["data"]
    down = next(d for d in state if d["model"] == "always-down")
    assert down["breaker"] == "open"
    assert down["consecutive_failures"] == 3
    assert 0 < down["open_for_seconds"] <= 60
    doctor = routed.admin("GET", "/admin/v1/doctor").json()["findings"]
    assert any(f["check"] == "breaker up-a/error-503" and f["level"] == "warn" for f in doctor)


def test_every_request_left_exactly_one_usage_event(
    sdk: openai.OpenAI, routed: RunningGateway
) -> None:
    key = routed.new_tenant("counted")
    client = openai.OpenAI(base_url=routed.url + "/v1", api_key=key, max_retries=0, timeout=20)
    outcomes = []
    try:
        for model in ("failover", "refused-then-fallback", "always-down", "ok", "slow-first-byte"):
            try:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}]
                )
                outcomes.append(200)
            except openai.APIStatusError as exc:
                outcomes.append(exc.status_code)
    finally:
        client.close()
    rows = routed.usage("counted", at_least=5)
    assert len(rows) == 5
    assert sorted(r["status"] for r in rows) == sorted(outcomes)
    assert all(r["attempts"] >= 1 or r["status"] == 502 for r in rows)
    assert httpx.get(routed.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("include_usage", [True, False])
def test_usage_is_counted_when_the_upstream_ignores_include_usage(
    sdk: openai.OpenAI, include_usage: bool
) -> None:
    options: Any = {"include_usage": True} if include_usage else openai.NOT_GIVEN
    chunks = list(
        sdk.chat.completions.create(
            model="usage-ignored",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options=options,
        )
    )
    deltas = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    usage_chunks = [c for c in chunks if not c.choices]
    if not include_usage:
        assert usage_chunks == []
        return
    assert len(usage_chunks) == 1
    assert usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens == deltas == 4
    assert usage_chunks[0].model == "usage-ignored"

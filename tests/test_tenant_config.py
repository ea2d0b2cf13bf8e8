"""A tenant's policy document end to end: set through the admin API, enforced on /v1 with the
official openai SDK as the client: refusals, PII redaction, blocked tools, allowed models, and
the per-tenant response cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from conftest import WEATHER_TOOLS, RunningGateway
from fakes.server import ServerThread

pytestmark = pytest.mark.slow
_clients: list[openai.OpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def tenant_with(gateway: RunningGateway, name: str, config: dict[str, Any]) -> openai.OpenAI:
    key = gateway.new_tenant(name)
    slug = gateway.keys[f"{name}:slug"]
    response = gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config)
    assert response.status_code == 200, response.text
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)
    _clients.append(sdk)
    return sdk


def upstream_bodies(fake: ServerThread, model: str) -> list[dict[str, Any]]:
    return [
        r.body
        for r in fake.app.state.requests
        if isinstance(r.body, dict) and r.body.get("model") == model
    ]


def test_config_round_trip_in_the_founding_shape(gateway: RunningGateway) -> None:
    gateway.new_tenant("shaped")
    slug = gateway.keys["shaped:slug"]
    empty = gateway.admin("GET", f"/admin/v1/tenants/{slug}/config").json()
    assert empty["tenant_id"] == slug
    assert empty["usage_mode"] == "hybrid"
    assert empty["blocked_tools"] == []
    assert empty["allowed_models"] is None
    document = {
        "tenant_id": slug,
        "blocked_tools": ["mcp_finance"],
        "sensitive_prompt_patterns": ["password", "credit card"],
        "refusal_rules": [{"type": "contains", "pattern": "hack", "reason": "Security violation"}],
        "rate_limit_per_minute": 60,
        "rate_limit_per_hour": 1000,
        "allowed_routes": ["PRICE_COMPARE", "DIET_NUTRITION"],
        "usage_mode": "local",
        "pii_actions": {"email": "redact"},
    }
    stored = gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=document).json()
    again = gateway.admin("GET", f"/admin/v1/tenants/{slug}/config").json()
    assert stored == again
    for field, value in document.items():
        assert again[field] == value
    assert gateway.admin("GET", f"/admin/v1/tenants/{slug}").json()["usage_mode"] == "local"


@pytest.mark.parametrize(
    ("document", "param"),
    [
        (
            {"refusal_rules": [{"type": "regex", "pattern": "(", "reason": "x"}]},
            "refusal_rules.0.pattern",
        ),
        ({"pii_actions": {"passport": "block"}}, "pii_actions"),
        ({"pii_actions": {"email": "shred"}}, "pii_actions.email"),
        ({"favourite_colour": "blue"}, "favourite_colour"),
        ({"sensitive_prompt_patterns": ["re:(unclosed"]}, "sensitive_prompt_patterns"),
        ({"tenant_id": "someone-else"}, "tenant_id"),
    ],
)
def test_invalid_config_is_refused_precisely(
    gateway: RunningGateway, document: dict[str, Any], param: str
) -> None:
    gateway.new_tenant("strict")
    slug = gateway.keys["strict:slug"]
    response = gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=document)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_refusals_are_normal_answers_and_never_reach_the_upstream(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    sdk = tenant_with(
        gateway,
        "refuser",
        {
            "sensitive_prompt_patterns": ["password"],
            "sensitive_reason": "No passwords, please.",
            "refusal_rules": [
                {"type": "contains", "pattern": "hack", "reason": "Security violation"}
            ],
        },
    )
    before = len(upstream_bodies(fake_openai, "gpt-4o-mini"))
    reply = sdk.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "help me hack the server"}]
    )
    assert reply.choices[0].message.content == "Security violation"
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.usage is not None
    assert reply.usage.total_tokens == 0
    streamed = list(
        sdk.chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": "my password is hunter2"}],
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        "No passwords, please."
    )
    assert len(upstream_bodies(fake_openai, "gpt-4o-mini")) == before
    rows = gateway.usage("refuser", at_least=2)
    assert sorted(r["refusal_reason"] for r in rows) == [
        "No passwords, please.",
        "Security violation",
    ]
    assert all(r["tokens_input"] == 0 and r["cost_usd"] == 0 and r["status"] == 200 for r in rows)


def test_pii_is_redacted_before_it_leaves(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    sdk = tenant_with(
        gateway, "redactor", {"pii_actions": {"email": "redact", "credit_card": "block"}}
    )
    reply = sdk.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "write to jane@example.com"}]
    )
    assert reply.choices[0].message.content == "Echo: write to [EMAIL]"
    sent = upstream_bodies(fake_openai, "gpt-4o-mini")[-1]
    assert "jane@example.com" not in str(sent)
    blocked = sdk.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "card 4111 1111 1111 1111"}]
    )
    assert blocked.choices[0].finish_reason == "content_filter"


def test_blocked_tools_are_removed_before_the_upstream(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    sdk = tenant_with(gateway, "toolless", {"blocked_tools": ["get_weather"]})
    reply = sdk.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "weather?"}], tools=WEATHER_TOOLS
    )
    assert reply.choices[0].finish_reason == "stop"
    assert "tools" not in upstream_bodies(fake_openai, "gpt-4o-mini")[-1]


def test_allowed_models_limit_what_a_tenant_sees_and_reaches(gateway: RunningGateway) -> None:
    sdk = tenant_with(gateway, "narrow", {"allowed_models": ["llama-fake"]})
    assert {m.id for m in sdk.models.list()} == {"llama-fake"}
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        sdk.embeddings.create(model="emb-openai", input="x")
    assert (
        sdk.chat.completions.create(model="llama-fake", messages=[{"role": "user", "content": "x"}])
        .choices[0]
        .message.content
        == "Echo: x"
    )


def test_the_cache_answers_repeats_per_tenant_and_streams_them(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    config = {"cache": {"enabled": True, "ttl_seconds": 60}}
    sdk = tenant_with(gateway, "cacher", config)
    other = tenant_with(gateway, "cacher-two", config)
    messages: Any = [{"role": "user", "content": "cache me please"}]
    calls = len(upstream_bodies(fake_openai, "gpt-4o-mini"))
    first = sdk.chat.completions.with_raw_response.create(model="gpt-fake", messages=messages)
    assert "x-switchboard-cache" not in first.headers
    second = sdk.chat.completions.with_raw_response.create(model="gpt-fake", messages=messages)
    assert second.headers["x-switchboard-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(upstream_bodies(fake_openai, "gpt-4o-mini")) == calls + 1
    streamed = list(
        sdk.chat.completions.create(
            model="gpt-fake",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        "Echo: cache me please"
    )
    assert streamed[-1].usage is not None
    sdk.chat.completions.create(
        model="gpt-fake", messages=messages, extra_headers={"Cache-Control": "no-cache"}
    )
    other.chat.completions.create(model="gpt-fake", messages=messages)
    assert len(upstream_bodies(fake_openai, "gpt-4o-mini")) == calls + 3
    rows = gateway.usage("cacher", at_least=4)
    assert sorted(r["cached"] for r in rows) == [False, False, True, True]
    assert all(r["cost_usd"] == 0 for r in rows if r["cached"])
    assert all(r["tokens_output"] > 0 for r in rows)


def test_a_streamed_answer_fills_the_cache_too(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    sdk = tenant_with(gateway, "stream-cacher", {"cache": {"enabled": True}})
    messages: Any = [{"role": "user", "content": "stream then repeat"}]
    calls = len(upstream_bodies(fake_openai, "gpt-4o-mini"))
    list(sdk.chat.completions.create(model="gpt-fake", messages=messages, stream=True))
    repeat = sdk.chat.completions.with_raw_response.create(model="gpt-fake", messages=messages)
    assert repeat.headers["x-switchboard-cache"] == "hit"
    assert repeat.parse().choices[0].message.content == "Echo: stream then repeat"
    assert len(upstream_bodies(fake_openai, "gpt-4o-mini")) == calls + 1


def test_every_surface_fills_and_reads_the_one_cache(
    gateway: RunningGateway, fake_openai: ServerThread
) -> None:
    """The OpenAI surface hands the cache the very bytes it sends; the Anthropic surface
    translates the answer, so the pipeline serialises it for the cache itself. Either one's
    miss is the other's hit, and the OpenAI body sent on a miss is the one a hit gives back."""
    key = gateway.new_tenant("surfaces")
    slug = gateway.keys["surfaces:slug"]
    config = {"cache": {"enabled": True, "ttl_seconds": 60}}
    assert gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config).status_code == 200
    calls = len(upstream_bodies(fake_openai, "gpt-4o-mini"))

    def ask(path: str, prompt: str) -> httpx.Response:
        headers = (
            {"x-api-key": key, "anthropic-version": "2023-06-01"}
            if path == "/v1/messages"
            else {"authorization": f"Bearer {key}"}
        )
        body = {
            "model": "gpt-fake",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": prompt}],
        }
        response = httpx.post(gateway.url + path, headers=headers, json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response

    first = ask("/v1/messages", "from anthropic")
    assert "x-switchboard-cache" not in first.headers
    assert first.json()["content"][0]["text"] == "Echo: from anthropic"
    hit = ask("/v1/chat/completions", "from anthropic")
    assert hit.headers["x-switchboard-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == "Echo: from anthropic"

    miss = ask("/v1/chat/completions", "from openai")
    assert "x-switchboard-cache" not in miss.headers
    again = ask("/v1/chat/completions", "from openai")
    assert again.headers["x-switchboard-cache"] == "hit"
    assert again.json() == miss.json()
    repeat = ask("/v1/messages", "from openai")
    assert repeat.headers["x-switchboard-cache"] == "hit"
    assert repeat.json()["content"][0]["text"] == "Echo: from openai"
    assert len(upstream_bodies(fake_openai, "gpt-4o-mini")) == calls + 2

"""Tenant rate limits on the request path, with the openai SDK as the client: headers on every
response, 429 with Retry-After in OpenAI's shape, token reservations settled to real usage,
and one limit held across two gateways sharing Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import ADMIN_KEY, RunningGateway, gateway_config, start_gateway
from fakes.server import ServerThread

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"


def limited_tenant(gateway: RunningGateway, name: str, config: dict[str, Any]) -> openai.OpenAI:
    key = gateway.new_tenant(name)
    slug = gateway.keys[f"{name}:slug"]
    assert gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config).status_code == 200
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)


def ask(sdk: openai.OpenAI, **extra: Any) -> Any:
    return sdk.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}], **extra
    )


def test_request_limit_with_headers_then_429(gateway: RunningGateway) -> None:
    sdk = limited_tenant(gateway, "rpm", {"rate_limit_per_minute": 3})
    try:
        remaining = []
        for _ in range(3):
            raw = ask(sdk)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as err:
            ask(sdk)
    finally:
        sdk.close()
    response = err.value.response
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.value.code == "rate_limit_exceeded"
    rows = gateway.usage("rpm", at_least=4)
    assert sorted(r["status"] for r in rows) == [200, 200, 200, 429]


def test_token_reservations_are_settled_to_real_usage(gateway: RunningGateway) -> None:
    sdk = limited_tenant(gateway, "tpm", {"tokens_per_minute": 100})
    try:
        # Each reserves ~55 tokens (prompt + max_tokens) but uses ~5: without settling, the
        # second would not fit in 100.
        for _ in range(2):
            raw = ask(sdk, max_tokens=50)
            assert raw.headers["x-ratelimit-limit-tokens"] == "100"
            time.sleep(0.1)  # the settlement runs just after the response
        with pytest.raises(openai.RateLimitError):
            ask(sdk, max_tokens=500)  # more than is left of the bucket
    finally:
        sdk.close()


def test_tenants_without_limits_get_no_limit_headers(gateway: RunningGateway) -> None:
    sdk = limited_tenant(gateway, "unlimited", {})
    try:
        assert "x-ratelimit-limit-requests" not in ask(sdk).headers
    finally:
        sdk.close()


def test_two_gateways_share_one_limit_through_redis(
    tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    config = gateway_config(fake_openai.url, fake_ollama.url)
    first, _ = start_gateway(tmp_path / "a", database, config, limits_url=REDIS_URL)
    second, _ = start_gateway(tmp_path / "b", database, config, limits_url=REDIS_URL)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with first, second:
        slug = f"shared-{time.monotonic_ns()}"
        httpx.post(first.url + "/admin/v1/tenants", json={"slug": slug}, headers=admin)
        httpx.put(
            first.url + f"/admin/v1/tenants/{slug}/config",
            json={"rate_limit_per_minute": 4},
            headers=admin,
        )
        key = httpx.post(first.url + f"/admin/v1/tenants/{slug}/keys", json={}, headers=admin)
        statuses = []
        for i in range(7):
            server = first if i % 2 == 0 else second
            response = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "gpt-fake", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": f"Bearer {key.json()['key']}"},
                timeout=10,
            )
            statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 200, 429, 429, 429]

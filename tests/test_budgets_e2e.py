"""Budgets, key policies and concurrency limits on the real request path, on SQLite and
PostgreSQL, with the openai SDK as the client:

- 50 concurrent *streamed* requests against a monthly budget: the ledger's spend never passes
  it, every streamed request that ran has a real cost, the rest get 429 ``budget_exceeded``;
- a key's own rate limit, allowed models and budget, set through the admin API and the CLI;
- concurrency limits with a slow upstream;
- budget alerts delivered to a webhook, once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from conftest import ADMIN_KEY, RunningGateway, start_gateway
from fakes.server import ServerThread
from switchboard.cli import app as cli_app
from switchboard.config import parse_config

pytestmark = pytest.mark.slow

# $1,000 / $2,000 per 1M tokens: a short answer costs cents, so budgets are easy to read.
PRICE = "{input_per_1m: 1000, output_per_1m: 2000}"


class Hooks:
    """A webhook receiver on loopback that keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        async def hook(request: Request) -> Response:
            body = await request.json()
            with self.lock:
                self.received.append(body)
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture(scope="module")
def hooks() -> Iterator[tuple[Hooks, str]]:
    receiver = Hooks()
    with ServerThread(receiver.app) as server:
        yield receiver, server.url + "/hook"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: ServerThread,
    hooks: tuple[Hooks, str],
) -> Iterator[RunningGateway]:
    data_dir = tmp_path_factory.mktemp("budgets")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{data_dir / 'gw.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    config = parse_config(
        f"""
providers:
  - name: openai-fake
    kind: openai
    base_url: {fake_openai.url}/v1
    api_key: sk-upstream-secret
    locality: external
models:
  - name: priced
    deployments: [{{provider: openai-fake, model: gpt-4o, price: {PRICE}}}]
  - name: priced-slow
    deployments: [{{provider: openai-fake, model: slow-150, price: {PRICE}}}]
  - name: slow
    deployments: [{{provider: openai-fake, model: slow-600}}]
  - name: cheap
    deployments: [{{provider: openai-fake, model: gpt-4o-mini}}]
""",
        source="<budgets>",
    )
    server, app = start_gateway(data_dir, url, config, budget_webhook_url=hooks[1])
    with server:
        yield RunningGateway(url=server.url, app=app, settings=app.state.runtime.settings)


def configure(gw: RunningGateway, name: str, config: dict[str, Any]) -> tuple[str, str]:
    key = gw.new_tenant(name)
    slug = gw.keys[f"{name}:slug"]
    response = gw.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config)
    assert response.status_code == 200, response.text
    return key, slug


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def ask(client: openai.OpenAI, model: str = "priced", **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "tell me a story"}], **extra
    )


def test_fifty_concurrent_streams_never_overshoot_the_budget(gw: RunningGateway) -> None:
    budget = 0.3
    key, slug = configure(gw, "budget50", {"monthly_budget_usd": budget})

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            stream = await client.chat.completions.create(
                model="priced-slow",
                messages=[{"role": "user", "content": "tell me a story"}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass
        except openai.RateLimitError as exc:
            return "refused" if exc.code == "budget_exceeded" else str(exc.code)
        return "ok"

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
        async with client:
            outcomes: list[str] = []
            for _ in range(15):  # waves of 50; later waves use what earlier ones gave back
                wave = await asyncio.gather(*(one(client) for _ in range(50)))
                outcomes += wave
                if "ok" not in wave:
                    break
                await asyncio.sleep(0.2)  # settlements are applied every 50 ms
            return outcomes

    outcomes = asyncio.run(run())
    ok = outcomes.count("ok")
    # Each reserves its worst case, 8 prompt tokens (our estimate) and 8 completion tokens:
    # $0.024; the fake's answers really cost $0.014, so settling lets more through than
    # budget / worst case = 12.
    assert ok > 12
    assert outcomes.count("refused") == len(outcomes) - ok
    rows = gw.usage("budget50", at_least=len(outcomes), timeout=10)
    served = [r for r in rows if r["status"] == 200]
    assert len(served) == ok
    assert all(r["cost_usd"] > 0 and r["stream"] for r in served)  # streams are not free
    assert sum(r["cost_usd"] for r in served) <= budget
    assert sorted({r["status"] for r in rows}) == [200, 429]
    standing = gw.admin("GET", f"/admin/v1/tenants/{slug}/budget").json()
    assert standing["budget_usd"] == budget
    assert standing["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in served), abs=1e-6)
    assert 0 <= standing["remaining_usd"] < 0.024  # used up to less than one worst case


def test_a_budget_error_speaks_openai(gw: RunningGateway) -> None:
    key, _ = configure(gw, "budget0", {"monthly_budget_usd": 0})
    with sdk(gw, key) as client, pytest.raises(openai.RateLimitError) as err:
        ask(client, max_tokens=5)
    assert err.value.status_code == 429
    assert err.value.code == "budget_exceeded"
    body = err.value.body
    assert isinstance(body, dict)
    assert body["type"] == "insufficient_quota"
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_alerts_reach_the_webhook_once(gw: RunningGateway, hooks: tuple[Hooks, str]) -> None:
    receiver, _ = hooks
    key, _ = configure(gw, "alerts", {"monthly_budget_usd": 0.05, "budget_alert_percent": 10})
    tenant_id = gw.admin("GET", f"/admin/v1/tenants/{gw.keys['alerts:slug']}").json()["id"]
    with sdk(gw, key) as client:
        for _ in range(2):
            ask(client, max_tokens=10)  # reserves $0.028, costs $0.014: past 10% at once
            time.sleep(0.1)  # settled
        with pytest.raises(openai.RateLimitError):
            ask(client, max_tokens=20)
        with pytest.raises(openai.RateLimitError):
            ask(client, max_tokens=20)

    def mine() -> list[dict[str, Any]]:
        with receiver.lock:
            return [a for a in receiver.received if a["tenant_id"] == tenant_id]

    deadline = time.monotonic() + 5
    while len(mine()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # nothing more arrives
    kinds = sorted(a["type"] for a in mine())
    assert kinds == ["budget.exceeded", "budget.threshold"]
    threshold = next(a for a in mine() if a["type"] == "budget.threshold")
    assert threshold["scope"] == f"tenant:{tenant_id}"
    assert threshold["budget_usd"] == 0.05
    assert threshold["spent_usd"] >= 0.005


def test_key_policy_through_the_admin_api(gw: RunningGateway) -> None:
    key, slug = configure(gw, "keypolicy", {})
    key_id = gw.admin("GET", f"/admin/v1/tenants/{slug}/keys").json()["data"][0]["id"]
    bad = gw.admin("PUT", f"/admin/v1/keys/{key_id}/policy", json={"rate_limit_per_minute": 0})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "rate_limit_per_minute"
    put = gw.admin(
        "PUT",
        f"/admin/v1/keys/{key_id}/policy",
        json={"rate_limit_per_minute": 2, "allowed_models": ["cheap"]},
    )
    assert put.status_code == 200, put.text
    assert put.json()["allowed_models"] == ["cheap"]
    got = gw.admin("GET", f"/admin/v1/keys/{key_id}/policy").json()
    assert got["rate_limit_per_minute"] == 2
    with sdk(gw, key) as client:
        assert [m.id for m in client.models.list()] == ["cheap"]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            ask(client, model="priced")
        assert "API key's allowed models" in denied.value.message
        first = client.chat.completions.with_raw_response.create(
            model="cheap", messages=[{"role": "user", "content": "hi"}]
        )
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        ask(client, model="cheap")
        with pytest.raises(openai.RateLimitError) as limited:
            ask(client, model="cheap")
    assert f"key:{key_id}" in limited.value.message
    cleared = gw.admin("PUT", f"/admin/v1/keys/{key_id}/policy", json={})
    assert cleared.json()["allowed_models"] is None
    missing = gw.admin("GET", "/admin/v1/keys/nope/policy")
    assert missing.status_code == 404


def test_concurrency_limit_with_a_slow_upstream(gw: RunningGateway) -> None:
    key, _ = configure(gw, "concurrent", {"max_concurrent_requests": 2})

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.RateLimitError as exc:
            return str(exc.code)
        return "ok"

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        async with client:
            burst = await asyncio.gather(*(one(client) for _ in range(4)))
            after = await one(client)  # the slots came back when the first two finished
            return [*burst, after]

    outcomes = asyncio.run(run())
    assert sorted(outcomes[:4]) == ["concurrency_limit_exceeded"] * 2 + ["ok"] * 2
    assert outcomes[4] == "ok"


def test_key_policy_from_the_cli(gw: RunningGateway, tmp_path: Path) -> None:
    _, slug = configure(gw, "clipolicy", {})
    key_id = gw.admin("GET", f"/admin/v1/tenants/{slug}/keys").json()["data"][0]["id"]
    runner = CliRunner()
    env = {"SWITCHBOARD_DATABASE_URL": gw.settings.resolved_database_url()}
    result = runner.invoke(
        cli_app,
        ["key", "policy", "set", key_id, "--budget", "0", "--models", "cheap, priced"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert '"monthly_budget_usd": 0.0' in result.stdout
    result = runner.invoke(cli_app, ["key", "policy", "set", key_id, "--rpm", "-1"], env=env)
    assert result.exit_code == 1
    assert "rate_limit_per_minute" in result.output
    shown = runner.invoke(cli_app, ["key", "policy", "show", key_id], env=env)
    assert '"allowed_models": [\n    "cheap",\n    "priced"\n  ]' in shown.stdout
    # The running gateway picks it up within the key cache TTL (0.5 s in tests).
    httpx.post(
        gw.url + f"/admin/v1/keys/{key_id}/revoke",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )  # drop the cached key the quick way: a fresh key shows the policy at once
    fresh = gw.admin("POST", f"/admin/v1/tenants/{slug}/keys", json={})
    fresh_id, fresh_key = fresh.json()["id"], fresh.json()["key"]
    runner.invoke(cli_app, ["key", "policy", "set", fresh_id, "--budget", "0"], env=env)
    with sdk(gw, fresh_key) as client, pytest.raises(openai.RateLimitError) as err:
        ask(client, model="cheap", max_tokens=5)
    assert err.value.code == "budget_exceeded"
    assert f"key:{fresh_id}" in err.value.message

"""Two gateway replicas, each a real `switchboard serve` process, share one PostgreSQL and one
Redis: a tenant's request limit and monthly budget hold across both while clients hammer both
at once.

- Request limit: 100 per hour for the tenant, 300 requests sent (150 to each replica, 16 at a
  time): exactly 100 are admitted (the issue asks for within 1%; GCRA in one Lua script gives
  exactly the limit, and the hour window keeps refill out of a run of a few seconds).
- Budget: streamed requests to both replicas: the ledger's spend stays within the budget.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from conftest import ADMIN_KEY, REDIS_URL
from fakes.server import ServerThread

pytestmark = pytest.mark.slow
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the replica exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the replica at {url} was not ready within {START_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, fake_openai: ServerThread
) -> Iterator[list[str]]:
    root = tmp_path_factory.mktemp("replicas")
    config = root / "switchboard.yaml"
    config.write_text(
        f"""
providers:
  - name: openai-fake
    kind: openai
    base_url: {fake_openai.url}/v1
    api_key: sk-upstream-secret
    locality: external
models:
  - name: priced
    deployments: [{{provider: openai-fake, model: gpt-4o,
                    price: {{input_per_1m: 1000, output_per_1m: 2000}}}}]
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        SWITCHBOARD_DATABASE_URL=pg_url,
        SWITCHBOARD_LIMITS_URL=REDIS_URL,
        SWITCHBOARD_ADMIN_KEY=ADMIN_KEY,
        SWITCHBOARD_CONFIG=str(config),
        SWITCHBOARD_KEY_CACHE_TTL_SECONDS="0.5",
        SWITCHBOARD_LOG_LEVEL="warning",
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    urls = []
    try:
        for name in ("a", "b"):
            port = _free_port()
            log = root / f"{name}.log"
            logs.append(log.open("wb"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "switchboard", "serve", "--port", str(port)],
                env={**env, "SWITCHBOARD_DATA_DIR": str(root / name)},
                stdout=subprocess.DEVNULL,
                stderr=logs[-1],
            )
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc, log)  # one at a time: both migrate the same database
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for file in logs:
            file.close()


def _tenant(url: str, config: dict[str, object]) -> tuple[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    slug = f"replicas-{secrets.token_hex(3)}"
    assert httpx.post(url + "/admin/v1/tenants", json={"slug": slug}, headers=admin).is_success
    put = httpx.put(url + f"/admin/v1/tenants/{slug}/config", json=config, headers=admin)
    assert put.status_code == 200, put.text
    key = httpx.post(url + f"/admin/v1/tenants/{slug}/keys", json={}, headers=admin)
    return slug, str(key.json()["key"])


async def _hammer(urls: list[str], key: str, total: int, body: dict[str, object]) -> list[int]:
    limit = asyncio.Semaphore(16)
    headers = {"Authorization": f"Bearer {key}"}

    async def one(client: httpx.AsyncClient, i: int) -> int:
        async with limit:
            response = await client.post(
                urls[i % 2] + "/v1/chat/completions", json=body, headers=headers
            )
            await response.aread()
            return response.status_code

    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(one(client, i) for i in range(total)))


def test_a_request_limit_holds_across_two_replicas(replicas: list[str]) -> None:
    _, key = _tenant(replicas[0], {"rate_limit_per_hour": 100})
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    statuses = asyncio.run(_hammer(replicas, key, 300, body))
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200


def test_a_budget_holds_across_two_replicas(replicas: list[str]) -> None:
    budget = 0.2
    slug, key = _tenant(replicas[1], {"monthly_budget_usd": budget})
    body = {
        "model": "priced",
        "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    statuses: list[int] = []
    for _ in range(10):  # waves: settlements give back what was reserved and not spent
        wave = asyncio.run(_hammer(replicas, key, 40, body))
        statuses += wave
        if 200 not in wave:
            break
        time.sleep(0.2)
    served = statuses.count(200)
    assert served >= 8  # budget / worst case ($0.024)
    assert set(statuses) == {200, 429}
    assert 0 < _spend(replicas[0], slug) <= budget


def _spend(url: str, slug: str) -> float:
    """The tenant's spend this month, from the ledger both replicas write in batches: read
    until two reads a flush apart agree."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    path = url + f"/admin/v1/tenants/{slug}/budget"
    spent = -1.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = float(httpx.get(path, headers=admin).json()["spent_usd"])
        if now == spent:
            return spent
        spent = now
        time.sleep(1.0)
    return spent

"""A graceful stop loses no usage event: what is still buffered is written on the way out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from conftest import ADMIN_KEY, gateway_config, ledger_rows, start_gateway
from fakes.server import ServerThread

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_buffered_usage_is_written_on_graceful_stop(
    backend: str,
    tmp_path: Path,
    fake_openai: ServerThread,
    fake_ollama: ServerThread,
    request: pytest.FixtureRequest,
) -> None:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    config = gateway_config(fake_openai.url, fake_ollama.url)
    # A flush interval far longer than the test: only the shutdown drain can write the events.
    server, _app = start_gateway(tmp_path, url, config, usage_flush_interval_seconds=3600)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with server:
        slug = f"drain-{backend}"
        tenant = httpx.post(server.url + "/admin/v1/tenants", json={"slug": slug}, headers=admin)
        key = httpx.post(server.url + f"/admin/v1/tenants/{slug}/keys", json={}, headers=admin)
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key.json()["key"], max_retries=0)
        for i in range(25):
            sdk.chat.completions.create(
                model="llama-fake", messages=[{"role": "user", "content": f"n{i}"}]
            )
        sdk.close()
        tenant_id = tenant.json()["id"]
        assert asyncio.run(ledger_rows(url, tenant_id)) == []  # still buffered
    rows = asyncio.run(ledger_rows(url, tenant_id))
    assert len(rows) == 25
    assert {r["status"] for r in rows} == {200}

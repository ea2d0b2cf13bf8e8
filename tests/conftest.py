"""Shared fixtures: databases (SQLite and the local PostgreSQL), fake upstreams, the gateway.

PostgreSQL at 127.0.0.1:5432 is required: a run creates a fresh database and drops it at the
end. When the server is unreachable the tests that need it fail with a clear message; they are
never skipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from typer.testing import CliRunner, Result

from fakes import anthropic_upstream, bedrock_upstream, ollama_upstream, openai_upstream
from fakes.server import ServerThread
from switchboard.api.http_protocol import CorkedHttpToolsProtocol
from switchboard.app import SwitchboardApp, create_app
from switchboard.cli import app as cli_app
from switchboard.config import GatewayConfig, parse_config
from switchboard.platform import Platform
from switchboard.settings import Settings
from switchboard.store import Database, UsageRepository

REDIS_URL = "redis://127.0.0.1:6379/0"


async def redis_or_fail(why: str) -> Redis:
    """A client of the local Redis, or a loud failure (never a skip) when it is not there."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(f"Redis is required at {REDIS_URL} for {why}: {exc}", pytrace=False)
    return client


async def delete_redis_prefix(client: Redis, prefix: str) -> None:
    """Delete one test's keys (every test uses a prefix of its own; they share one Redis)."""
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)


class Clock:
    """A clock the test moves (``clock.now += seconds``), for code that takes ``clock=``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PG_ADMIN_DSN = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
ADMIN_KEY = "sk-sb-admin-test-" + secrets.token_hex(8)
# The one tool every fake upstream answers with a call to it: {"location": "Paris"}.
WEATHER_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]
BEDROCK_ACCESS_KEY = "AKIDSWITCHBOARDTEST0"
BEDROCK_SECRET_KEY = "switchboard-bedrock-test-secret"
BEDROCK_REGION = "us-east-1"
Run = Callable[..., Result]  # the `cli` fixture: run(*args, env=..., input=...)


async def _pg_admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    name = f"sb_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is required at {PG_ADMIN_DSN} (set SWITCHBOARD_TEST_POSTGRES to "
            f"point elsewhere): {exc}",
            pytrace=False,
        )
    user_host = PG_ADMIN_DSN.removeprefix("postgresql://").rsplit("/", 1)[0]
    yield f"postgresql+asyncpg://{user_host}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated database on each backend (SQLite, then PostgreSQL)."""
    database = Database(db_url)
    try:
        await database.migrate()
        yield database
    finally:
        await database.dispose()


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[ServerThread]:
    with ServerThread(openai_upstream.create_app(api_key="sk-upstream-secret")) as server:
        yield server


@pytest.fixture(scope="session")
def fake_ollama() -> Iterator[ServerThread]:
    with ServerThread(ollama_upstream.create_app()) as server:
        yield server


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[ServerThread]:
    app = anthropic_upstream.create_app(api_key="sk-ant-upstream-secret")
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="session")
def fake_bedrock() -> Iterator[ServerThread]:
    """Fake Bedrock checking SigV4 for fixed test credentials; for the session the gateway
    (in-process) finds them in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
    app = bedrock_upstream.create_app(BEDROCK_ACCESS_KEY, BEDROCK_SECRET_KEY, BEDROCK_REGION)
    with pytest.MonkeyPatch.context() as env, ServerThread(app) as server:
        env.setenv("AWS_ACCESS_KEY_ID", BEDROCK_ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", BEDROCK_SECRET_KEY)
        for name in (
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
        ):
            env.delenv(name, raising=False)
        yield server


def gateway_config(
    openai_url: str,
    ollama_url: str,
    anthropic_url: str | None = None,
    *,
    bedrock_url: str | None = None,
) -> GatewayConfig:
    """Every model the end-to-end tests route to, over the fake upstreams (Anthropic's only
    when ``anthropic_url`` is given)."""
    text = f"""
providers:
  - name: openai-fake
    kind: openai
    base_url: {openai_url}/v1
    api_key: sk-upstream-secret
    locality: external
  - name: openai-impatient
    kind: openai
    base_url: {openai_url}/v1
    api_key: sk-upstream-secret
    locality: external
    read_timeout: 0.5
  - name: ollama-fake
    kind: ollama
    base_url: {ollama_url}
    locality: local
  - name: nowhere
    kind: openai
    base_url: http://127.0.0.1:9/v1
    locality: external
    connect_timeout: 1
models:
  - name: gpt-fake
    deployments: [{{provider: openai-fake, model: gpt-4o-mini}}]
  - name: llama-fake
    deployments: [{{provider: ollama-fake, model: "llama3.1:8b"}}]
  - name: mixed
    deployments:
      - {{provider: openai-fake, model: gpt-4o-mini}}
      - {{provider: ollama-fake, model: "llama3.1:8b"}}
  - name: emb-openai
    deployments: [{{provider: openai-fake, model: text-embedding-3-small}}]
  - name: emb-ollama
    deployments: [{{provider: ollama-fake, model: nomic-embed-text}}]
  - name: broken
    deployments: [{{provider: openai-fake, model: error-500}}]
  - name: limited
    deployments: [{{provider: openai-fake, model: error-429}}]
  - name: upstream-rejects
    deployments: [{{provider: openai-fake, model: error-400}}]
  - name: slow
    deployments: [{{provider: openai-impatient, model: slow-3000}}]
  - name: cut
    deployments: [{{provider: openai-fake, model: cut-3}}]
  - name: stall
    deployments: [{{provider: openai-fake, model: stall}}]
  - name: leaky
    deployments: [{{provider: openai-fake, model: leak}}]
  - name: ollama-cut
    deployments: [{{provider: ollama-fake, model: cut-3}}]
  - name: ollama-stall
    deployments: [{{provider: ollama-fake, model: stall}}]
  - name: unreachable
    deployments: [{{provider: nowhere, model: gpt-4o}}]
"""
    if anthropic_url is not None:
        provider = f"""  - name: anthropic-fake
    kind: anthropic
    base_url: {anthropic_url}
    api_key: sk-ant-upstream-secret
    locality: external
"""
        text = text.replace("\nmodels:\n", "\n" + provider + "models:\n", 1)
        text += """  - name: claude-fake
    deployments: [{provider: anthropic-fake, model: claude-3-5-haiku-20241022}]
  - name: claude-broken
    deployments: [{provider: anthropic-fake, model: error-500}]
  - name: claude-overloaded
    deployments: [{provider: anthropic-fake, model: error-529}]
  - name: claude-overloaded-mid-stream
    deployments: [{provider: anthropic-fake, model: stream-overloaded}]
"""
    if bedrock_url is not None:
        provider = f"""  - name: bedrock-fake
    kind: bedrock
    region: {BEDROCK_REGION}
    base_url: {bedrock_url}
    locality: external
"""
        text = text.replace("\nmodels:\n", "\n" + provider + "models:\n", 1)
        text += """  - name: bedrock-claude
    deployments: [{provider: bedrock-fake, model: "anthropic.claude-3-5-sonnet-20240620-v1:0"}]
  - name: bedrock-profile
    deployments: [{provider: bedrock-fake, model: "us.anthropic.claude-3-5-sonnet-20241022-v2:0"}]
  - name: bedrock-throttled
    deployments: [{provider: bedrock-fake, model: error-429}]
  - name: titan-embed
    deployments: [{provider: bedrock-fake, model: "amazon.titan-embed-text-v2:0"}]
"""
    return parse_config(text, source="<tests>")


@dataclass
class RunningGateway:
    url: str
    app: SwitchboardApp
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def new_tenant(self, slug: str, usage_mode: str = "hybrid") -> str:
        """Create a tenant (unique slug) and a key for it; return the key."""
        unique = f"{slug}-{secrets.token_hex(3)}"
        created = self.admin(
            "POST", "/admin/v1/tenants", json={"slug": unique, "usage_mode": usage_mode}
        )
        assert created.status_code == 201, created.text
        key = self.admin("POST", f"/admin/v1/tenants/{unique}/keys", json={"name": "test"})
        assert key.status_code == 201, key.text
        self.keys[slug] = key.json()["key"]
        self.keys[slug + ":slug"] = unique
        return str(key.json()["key"])

    def usage_of(self, slug: str, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The usage row of one request, once it has been written."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.usage(slug, at_least=0, timeout=0)
            found = [r for r in rows if r["request_id"] == request_id]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no usage row for {request_id}"
            time.sleep(0.05)

    def usage(self, slug: str, *, at_least: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The tenant's usage rows, once at least ``at_least`` have been written."""
        tenant = self.keys[slug + ":slug"]
        deadline = time.monotonic() + timeout
        while True:
            rows: list[dict[str, Any]] = self.admin(
                "GET", f"/admin/v1/tenants/{tenant}/usage"
            ).json()
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def start_gateway(
    data_dir: Path, database_url: str, config: GatewayConfig, **overrides: Any
) -> tuple[ServerThread, SwitchboardApp]:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "admin_key": ADMIN_KEY,
        "usage_flush_interval_seconds": 0.05,
        "key_cache_ttl_seconds": 0.5,
        "max_body_bytes": 256 * 1024,
    }
    settings = Settings(**{**values, **overrides})
    app = create_app(settings, config)
    return ServerThread(app, http=CorkedHttpToolsProtocol), app  # as `switchboard serve` runs


async def ledger_rows(url: str, tenant_id: str) -> list[dict[str, Any]]:
    """The usage ledger of one tenant, read through a database connection of its own."""
    db = Database(url)
    try:
        return await UsageRepository(db).query(tenant_id)
    finally:
        await db.dispose()


def gateway_database(request: pytest.FixtureRequest, data_dir: Path) -> str:
    """The database URL of a gateway fixture parametrised over ``sqlite`` and ``postgresql``."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{data_dir / 'gw.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: ServerThread,
    fake_ollama: ServerThread,
    fake_anthropic: ServerThread,
    fake_bedrock: ServerThread,
) -> Iterator[RunningGateway]:
    """The gateway as a real server on a loopback port, once per database backend. On
    PostgreSQL it keeps its response cache in the local Redis, as replicas do in production;
    on SQLite, in process."""
    data_dir = tmp_path_factory.mktemp("gateway")
    url = gateway_database(request, data_dir)
    config = gateway_config(
        fake_openai.url, fake_ollama.url, fake_anthropic.url, bedrock_url=fake_bedrock.url
    )
    shared = {"cache_url": REDIS_URL} if request.param == "postgresql" else {}
    server, app = start_gateway(data_dir, url, config, **shared)
    with server:
        yield RunningGateway(url=server.url, app=app, settings=app.state.runtime.settings)


@pytest.fixture
async def platform(db_url: str) -> AsyncIterator[Platform]:
    """The admin services over a migrated database, on SQLite and on PostgreSQL."""
    database = Database(db_url)
    try:
        await database.migrate()
        yield Platform(database)
    finally:
        await database.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path) -> Run:
    """Invoke the CLI in process with SWITCHBOARD_* from this test only, cwd = tmp_path."""
    for name in list(os.environ):
        if name.startswith("SWITCHBOARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return runner.invoke(cli_app, list(args), env=env, input=input, catch_exceptions=False)

    return run

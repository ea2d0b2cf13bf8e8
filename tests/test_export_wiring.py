"""The Lago export wired in: the gateway's in-process exporter, the admin routes under
/admin/v1/export, and the `switchboard export ...` / `export-worker` commands.

Every test uses a database of its own (a SQLite file, or a fresh PostgreSQL database), so the
backlog numbers are exact. The fake Lago (tests/fakes/lago_upstream.py) records every
transaction id it processed, so "exactly once" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pytest
from sqlalchemy import select

from conftest import ADMIN_KEY, RunningGateway, gateway_config, start_gateway
from fakes import lago_upstream
from fakes.server import ServerThread
from switchboard.app import SwitchboardApp
from switchboard.config import GatewayConfig
from switchboard.errors import ConfigError
from switchboard.metering.exporter import LagoExporter
from switchboard.metering.lago import LagoClient
from switchboard.metering.usage import UsageEvent
from switchboard.runtime import Runtime
from switchboard.settings import Settings
from switchboard.store import Database, TenantRepository, UsageRepository
from switchboard.store.database import utcnow
from switchboard.store.schema import usage_events, usage_exports

pytestmark = pytest.mark.slow

KEY = "lago-wiring-key-" + secrets.token_hex(4)
CHAT = [{"role": "user", "content": "hello"}]


# -- fixtures and helpers -------------------------------------------------------------------


async def _pg(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def own_db_url(db_url: str) -> Iterator[str]:
    """``db_url``, but on PostgreSQL a database of this test's own (others share pg_url)."""
    if not db_url.startswith("postgresql"):
        yield db_url
        return
    name = f"sb_wiring_{secrets.token_hex(5)}"
    asyncio.run(_pg(db_url, f'CREATE DATABASE "{name}"'))
    try:
        yield db_url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_pg(db_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def lago() -> Iterator[ServerThread]:
    with ServerThread(lago_upstream.create_app(KEY)) as server:
        yield server


@pytest.fixture
def config(fake_openai: ServerThread, fake_ollama: ServerThread) -> GatewayConfig:
    return gateway_config(fake_openai.url, fake_ollama.url)


def fake(lago: ServerThread) -> Any:
    return lago.app.state


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)


def stored_ids(lago: ServerThread) -> list[str]:
    with fake(lago).lock:
        return [e["transaction_id"] for e in fake(lago).stored]


def gateway_with_lago(
    tmp_path: Path, url: str, config: GatewayConfig, lago: ServerThread, **overrides: Any
) -> tuple[ServerThread, SwitchboardApp]:
    """A gateway exporting to the fake Lago, not yet started (``with server:`` starts it)."""
    values: dict[str, Any] = {
        "lago_url": lago.url,
        "lago_api_key": KEY,
        "export_interval_seconds": 0.05,
        **overrides,
    }
    return start_gateway(tmp_path, url, config, **values)


def running(server: ServerThread, app: SwitchboardApp) -> RunningGateway:
    return RunningGateway(url=server.url, app=app, settings=app.state.runtime.settings)


def chat(sdk: openai.OpenAI, model: str = "gpt-fake") -> str:
    raw = sdk.chat.completions.with_raw_response.create(model=model, messages=CHAT)  # type: ignore[arg-type]
    return raw.headers["x-request-id"]


def export_status(gw: RunningGateway) -> dict[str, Any]:
    response = gw.admin("GET", "/admin/v1/export")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def tenant_id(gw: RunningGateway, slug: str) -> str:
    return str(gw.admin("GET", f"/admin/v1/tenants/{gw.keys[slug + ':slug']}").json()["id"])


def in_db(url: str, fn: Callable[[Database], Any]) -> Any:
    async def go() -> Any:
        db = Database(url)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


async def export_rows(db: Database) -> dict[str, dict[str, Any]]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(usage_exports))).mappings().all()
    return {r["request_id"]: dict(r) for r in rows}


# -- the in-process exporter ----------------------------------------------------------------


def test_requests_reach_lago_exactly_once_under_their_request_id(
    own_db_url: str, tmp_path: Path, config: GatewayConfig, lago: ServerThread
) -> None:
    server, app = gateway_with_lago(tmp_path, own_db_url, config, lago)
    with server:
        gw = running(server, app)
        key = gw.new_tenant("billed")
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        ids = [chat(sdk) for _ in range(5)]
        emb = sdk.embeddings.with_raw_response.create(model="emb-openai", input="x y z")
        ids.append(emb.headers["x-request-id"])
        sdk.close()

        wait_until(lambda: len(stored_ids(lago)) >= len(ids), what="the events in Lago")
        time.sleep(0.5)  # ten more export intervals: nothing is sent again
        assert sorted(stored_ids(lago)) == sorted(ids)
        assert max(fake(lago).received.values()) == 1  # sent once, not deduplicated by Lago
        assert fake(lago).duplicates == 0
        events = {e["transaction_id"]: e for e in fake(lago).stored}
        assert {e["external_subscription_id"] for e in events.values()} == {
            f"sb_{tenant_id(gw, 'billed')}"
        }
        assert {e["code"] for e in events.values()} == {"llm_usage"}
        first = events[ids[0]]["properties"]
        assert first["model"] == "gpt-fake"
        assert first["provider"] == "openai-fake"
        assert first["total_tokens"] == first["tokens_input"] + first["tokens_output"] > 0

        status = export_status(gw)
        assert status == {
            "pending": 0,
            "dead": 0,
            "oldest_pending_at": None,
            "lag_seconds": 0.0,
            "lago_configured": True,
            "exporting": True,
        }
    states = in_db(own_db_url, export_rows)
    assert {states[i]["state"] for i in ids} == {"sent"}


def test_admin_export_routes_report_backlog_and_redrive_a_dead_letter(
    tmp_path: Path, config: GatewayConfig, lago: ServerThread
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    server, app = gateway_with_lago(tmp_path, url, config, lago)
    with server:
        gw = running(server, app)
        for method, path in (
            ("GET", "/admin/v1/export"),
            ("GET", "/admin/v1/export/dead"),
            ("POST", "/admin/v1/export/redrive"),
        ):
            denied = httpx.request(method, server.url + path, timeout=10)
            assert denied.status_code == 401, path
        key = gw.new_tenant("ops")
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)

        # Lago down: the event waits in the queue, and the lag grows.
        fake(lago).down = True
        held = chat(sdk)
        wait_until(lambda: fake(lago).refused > 0, what="a refused send")
        time.sleep(0.2)
        backlog = export_status(gw)
        assert (backlog["pending"], backlog["dead"]) == (1, 0)
        assert backlog["lag_seconds"] > 0.1
        oldest = datetime.fromisoformat(backlog["oldest_pending_at"])
        assert oldest.tzinfo is not None
        assert abs((utcnow() - oldest).total_seconds() - backlog["lag_seconds"]) < 5
        fake(lago).down = False  # back: the retry (after a 1 s back-off) delivers it
        wait_until(lambda: held in stored_ids(lago), what="the held event delivered")
        wait_until(lambda: export_status(gw)["pending"] == 0, what="an empty backlog")

        # Lago refuses the next event for good (404, e.g. an unknown metric): a dead letter.
        fake(lago).fail_next = [404]
        refused = chat(sdk)
        wait_until(lambda: export_status(gw)["dead"] == 1, what="a dead letter")
        assert export_status(gw)["pending"] == 0
        dead = gw.admin("GET", "/admin/v1/export/dead")
        assert dead.status_code == 200
        (letter,) = dead.json()["data"]
        assert letter["request_id"] == refused
        assert letter["tenant_id"] == tenant_id(gw, "ops")
        assert letter["error"].startswith("404")
        assert "Not Found" in letter["error"]
        assert letter["attempts"] == 1
        assert datetime.fromisoformat(letter["event_at"]).tzinfo is not None
        assert gw.admin("GET", "/admin/v1/export/dead?limit=0").status_code == 400

        bad = gw.admin("POST", "/admin/v1/export/redrive", json={"request_ids": "all"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "request_ids"
        other = gw.admin("POST", "/admin/v1/export/redrive", json={"request_ids": ["req_nope"]})
        assert other.json() == {"requeued": 0}
        assert export_status(gw)["dead"] == 1

        redriven = gw.admin("POST", "/admin/v1/export/redrive", json={"request_ids": [refused]})
        assert redriven.status_code == 200
        assert redriven.json() == {"requeued": 1}
        wait_until(lambda: refused in stored_ids(lago), what="the re-driven event delivered")
        wait_until(lambda: export_status(gw)["pending"] == 0, what="an empty backlog")
        assert export_status(gw)["dead"] == 0
        assert gw.admin("POST", "/admin/v1/export/redrive").json() == {"requeued": 0}
        sdk.close()
    assert sorted(stored_ids(lago)) == sorted([held, refused])
    assert max(fake(lago).received.values()) == 1


def test_export_in_server_off_exports_nothing_but_reports_the_backlog(
    tmp_path: Path, config: GatewayConfig, lago: ServerThread
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    server, app = gateway_with_lago(tmp_path, url, config, lago, export_in_server=False)
    with server:
        gw = running(server, app)
        key = gw.new_tenant("quiet")
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        ids = [chat(sdk) for _ in range(3)]
        sdk.close()
        wait_until(lambda: export_status(gw)["pending"] == 3, what="three pending events")
        time.sleep(0.5)  # ten export intervals, had the exporter been running
        status = export_status(gw)
        assert (status["pending"], status["dead"]) == (3, 0)
        assert status["lag_seconds"] > 0.4
        assert (status["lago_configured"], status["exporting"]) == (True, False)
        assert gw.admin("GET", "/admin/v1/export/dead").json() == {"data": []}
    assert stored_ids(lago) == []
    assert sum(fake(lago).received.values()) == 0
    states = in_db(url, export_rows)
    assert {states[i]["state"] for i in ids} == {"pending"}


def test_a_lago_url_without_a_key_stops_start_up(tmp_path: Path, config: GatewayConfig) -> None:
    db_file = tmp_path / "gw.db"
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{db_file}",
        admin_key=ADMIN_KEY,
        lago_url="http://127.0.0.1:9",
    )
    with pytest.raises(ConfigError, match="SWITCHBOARD_LAGO_API_KEY"):
        asyncio.run(Runtime.start(settings, config))
    assert not db_file.exists()  # refused before the database was touched


def test_stop_is_bounded_while_a_send_hangs_and_the_recorder_still_drains(
    tmp_path: Path, config: GatewayConfig, lago: ServerThread
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    # Events are written only when two are waiting, or by the shutdown drain.
    server, app = gateway_with_lago(
        tmp_path, url, config, lago, usage_flush_interval_seconds=3600, usage_batch_size=2
    )
    fake(lago).delay = 60.0  # Lago hangs: the exporter's send is still in flight at stop
    server.start()
    try:
        gw = running(server, app)
        key = gw.new_tenant("stopping")
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        ids = [chat(sdk), chat(sdk)]  # a full batch: written, then claimed by the exporter

        async def claimed(db: Database) -> bool:
            rows = await export_rows(db)
            return all(i in rows and rows[i]["attempts"] >= 1 for i in ids)

        wait_until(lambda: bool(in_db(url, claimed)), what="the exporter to claim the events")
        ids.append(chat(sdk))  # buffered: only the drain writes it
        sdk.close()
    finally:
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    assert took < 9, f"stopping took {took:.1f} s"

    async def ledger(db: Database) -> set[str]:
        async with db.engine.connect() as conn:
            return set((await conn.execute(select(usage_events.c.request_id))).scalars())

    assert set(ids) <= in_db(url, ledger)
    states = in_db(url, export_rows)
    assert {states[i]["state"] for i in ids} == {"pending"}  # nothing lost, nothing sent
    assert stored_ids(lago) == []


# -- the command line -----------------------------------------------------------------------


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return {**env, "SWITCHBOARD_DATA_DIR": str(data_dir), **extra}


def sb(args: Sequence[str], data_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        env=_env(data_dir, **extra),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _events(tenant: str, n: int, at: datetime) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"req_{secrets.token_hex(8)}",
            tenant_id=tenant,
            key_id=None,
            created_at=at,
            endpoint="chat",
            model="gpt-fake",
            provider="openai-fake",
            tokens_input=10,
            tokens_output=5,
            cost_usd=0.001,
        )
        for _ in range(n)
    ]


def seed_queue(data_dir: Path, lago: ServerThread, *, dead: int, pending: int) -> dict[str, Any]:
    """A SQLite database in ``data_dir`` with ``dead`` dead letters (Lago answered 404) and
    ``pending`` events a minute old that were never sent."""
    url = f"sqlite+aiosqlite:///{data_dir / 'switchboard.db'}"

    async def go(db: Database) -> dict[str, Any]:
        await db.migrate()
        tenant = (await TenantRepository(db).create("acme", usage_mode="hybrid")).id
        usage = UsageRepository(db)
        exporter = LagoExporter(db, LagoClient(lago.url, KEY), metric_code="llm_tokens")
        dead_ids = []
        try:
            for _ in range(dead):
                (event,) = _events(tenant, 1, utcnow())
                await usage.write([event])
                fake(lago).fail_next = [404]
                assert (await exporter.run_once()).dead == 1
                dead_ids.append(event.request_id)
        finally:
            await exporter.aclose()
        minute_ago = utcnow() - timedelta(seconds=60)
        waiting = _events(tenant, pending, minute_ago)
        await usage.write(waiting)
        return {
            "url": url,
            "tenant": tenant,
            "dead": dead_ids,
            "pending": [e.request_id for e in waiting],
            "oldest": minute_ago,
        }

    data_dir.mkdir(parents=True, exist_ok=True)
    seeded: dict[str, Any] = in_db(url, go)
    return seeded


def test_export_status_dead_and_redrive_commands(tmp_path: Path, lago: ServerThread) -> None:
    data_dir = tmp_path / "data"
    seeded = seed_queue(data_dir, lago, dead=2, pending=3)

    status = orjson.loads(ok(sb(["export", "status", "--json"], data_dir)).stdout)
    assert (status["pending"], status["dead"]) == (3, 2)
    oldest = datetime.fromisoformat(status["oldest_pending_at"])
    assert abs((oldest - seeded["oldest"]).total_seconds()) < 0.01
    assert 59 < status["lag_seconds"] < 120
    table = ok(sb(["export", "status"], data_dir)).stdout.splitlines()
    assert table[0].split() == ["pending", "3"]
    assert table[1].split() == ["dead", "2"]

    letters = orjson.loads(ok(sb(["export", "dead", "--json"], data_dir)).stdout)
    assert [d["request_id"] for d in letters] == seeded["dead"]
    assert {d["tenant_id"] for d in letters} == {seeded["tenant"]}
    assert all(d["error"].startswith("404") for d in letters)

    named = ok(sb(["export", "redrive", seeded["dead"][0], "req_not_dead"], data_dir))
    assert "re-queued 1 dead usage event" in named.stderr
    assert "1 of the named events were not dead letters" in named.stderr
    rest = ok(sb(["export", "redrive"], data_dir))
    assert "re-queued 1 dead usage event" in rest.stderr
    after = orjson.loads(ok(sb(["export", "status", "--json"], data_dir)).stdout)
    assert (after["pending"], after["dead"]) == (5, 0)
    assert stored_ids(lago) == []  # inspecting and re-queueing never sends


def test_export_worker_without_lago_settings_exits_with_a_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    started = time.monotonic()
    no_url = sb(["export-worker"], data_dir)
    no_key = sb(["export-worker"], data_dir, SWITCHBOARD_LAGO_URL="http://127.0.0.1:9")
    assert time.monotonic() - started < 20
    assert no_url.returncode == 2
    assert "error: SWITCHBOARD_LAGO_URL is not set" in no_url.stderr
    assert no_key.returncode == 2
    assert "SWITCHBOARD_LAGO_API_KEY is not" in no_key.stderr
    for proc in (no_url, no_key):
        assert "Traceback" not in proc.stderr


def test_export_worker_delivers_then_stops_on_sigterm(tmp_path: Path, lago: ServerThread) -> None:
    data_dir = tmp_path / "data"
    seeded = seed_queue(data_dir, lago, dead=1, pending=4)
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "export-worker", "--log-every", "0.2"],
            env=_env(
                data_dir,
                SWITCHBOARD_LAGO_URL=lago.url,
                SWITCHBOARD_LAGO_API_KEY=KEY,
                SWITCHBOARD_EXPORT_INTERVAL_SECONDS="0.1",
            ),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_until(
                lambda: len(stored_ids(lago)) >= 4, timeout=20, what="the worker's first export"
            )
            more = [e.request_id for e in _events(seeded["tenant"], 2, utcnow())]

            async def write_more(db: Database) -> None:
                events = _events(seeded["tenant"], 2, utcnow())
                for event, rid in zip(events, more, strict=True):
                    event.request_id = rid
                await UsageRepository(db).write(events)

            in_db(seeded["url"], write_more)  # written while it runs: exported too
            wait_until(lambda: len(stored_ids(lago)) >= 6, what="the later events")
            time.sleep(0.5)  # a few more intervals and log lines
            worker.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = worker.wait(timeout=20)
            assert time.monotonic() - started < 20
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    text = log_file.read_text()
    assert code == 0, text
    assert sorted(stored_ids(lago)) == sorted(seeded["pending"] + more)
    assert max(fake(lago).received.values()) == 1
    assert "exporting usage events to Lago at" in text
    assert KEY not in text
    assert "export backlog: 0 pending, 1 dead" in text
    assert "stopping the export worker" in text
    assert "Traceback" not in text

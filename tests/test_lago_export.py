"""Exporting the usage ledger to Lago: mapping, failure handling, and exactly-once delivery.

Every database test runs on SQLite and on PostgreSQL; on PostgreSQL each test gets a database
of its own, so backlog numbers are exact. The fake Lago (tests/fakes/lago_upstream.py) checks
auth, the event schema, batch size and transaction-id uniqueness the way Lago does.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import select

from fakes import lago_upstream
from fakes.server import ServerThread
from switchboard.metering.exporter import LagoExporter
from switchboard.metering.lago import LagoClient, Outcome, classify, subscription_id, to_lago_event
from switchboard.metering.usage import UsageEvent
from switchboard.settings import Settings
from switchboard.store import Database, TenantRepository, UsageRepository
from switchboard.store.database import _alembic_config, utcnow
from switchboard.store.schema import usage_events, usage_exports

KEY = "lago-test-key-" + secrets.token_hex(4)
CODE = "llm_tokens"


# -- fixtures -------------------------------------------------------------------------------


async def _pg(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _fresh(url: str) -> tuple[str, str | None]:
    """SQLite URLs are fresh already; on PostgreSQL, a new database next to ``url``'s."""
    if not url.startswith("postgresql"):
        return url, None
    name = f"sb_lago_{secrets.token_hex(5)}"
    await _pg(url, f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name, name


@pytest.fixture
async def fresh_url(db_url: str) -> AsyncIterator[str]:
    url, name = await _fresh(db_url)
    try:
        yield url
    finally:
        if name is not None:
            await _pg(db_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(fresh_url: str) -> AsyncIterator[Database]:
    database = Database(fresh_url)
    try:
        await database.migrate()
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def lago() -> Iterator[ServerThread]:
    with ServerThread(lago_upstream.create_app(KEY)) as server:
        yield server


@pytest.fixture
async def exporters() -> AsyncIterator[list[LagoExporter]]:
    made: list[LagoExporter] = []
    yield made
    for exporter in made:
        await exporter.aclose()


def exporter_for(
    made: list[LagoExporter], db: Database, lago: ServerThread, **kwargs: Any
) -> LagoExporter:
    exporter = LagoExporter(db, LagoClient(lago.url, KEY), metric_code=CODE, **kwargs)
    made.append(exporter)
    return exporter


async def tenant(db: Database) -> str:
    return (await TenantRepository(db).create(f"t-{secrets.token_hex(4)}", usage_mode="hybrid")).id


def usage(tenant_id: str, n: int, *, at: datetime | None = None, **fields: Any) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=fields.pop("request_id", None) or f"req_{secrets.token_hex(8)}",
            tenant_id=tenant_id,
            key_id=None,
            created_at=at or utcnow(),
            endpoint="chat",
            model="gpt-fake",
            provider="openai-fake",
            tokens_input=10,
            tokens_output=5,
            cost_usd=0.25,
            user_id="alice",
            **fields,
        )
        for _ in range(n)
    ]


async def drain(exporter: LagoExporter, *, runs: int = 50) -> int:
    """run_once until nothing is claimed (bounded); returns how many runs claimed something."""
    for run in range(runs):
        if (await exporter.run_once()).claimed == 0:
            return run
    raise AssertionError(f"still exporting after {runs} runs")


def state(lago: ServerThread) -> Any:
    return lago.app.state


async def export_states(db: Database) -> dict[str, str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(usage_exports.c.request_id, usage_exports.c.state))
        return dict(rows.all())


# -- mapping and classification (no database) -----------------------------------------------


def test_event_mapping() -> None:
    row = {
        "request_id": "req_1",
        "tenant_id": "ten_abc",
        "created_at": datetime(2025, 1, 2, 3, 4, 5, 678000),  # naive, as SQLite returns it
        "model": "gpt-fake",
        "provider": "openai-fake",
        "tokens_input": 100,
        "tokens_output": 20,
        "cost_usd": 0.0125,
        "billed_amount": 0.0135,
        "currency": "EUR",
        "user_id": "alice",
    }
    event = to_lago_event(row, "llm_tokens")
    assert event == {
        "transaction_id": "req_1",
        "external_subscription_id": "sb_ten_abc",
        "code": "llm_tokens",
        "timestamp": int(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        "properties": {
            "model": "gpt-fake",
            "provider": "openai-fake",
            "tokens_input": 100,
            "tokens_output": 20,
            "total_tokens": 120,
            "cost": 0.0125,
            "billed_amount": 0.0135,
            "currency": "EUR",
            "user": "alice",
        },
    }
    assert subscription_id("ten_abc") == "sb_ten_abc"
    anonymous = to_lago_event({**row, "user_id": None, "provider": None}, "x")
    assert "user" not in anonymous["properties"]
    assert "provider" not in anonymous["properties"]


def test_classify_maps_lago_answers() -> None:
    def outcomes(status: int, body: str, count: int) -> list[Outcome]:
        return [d.outcome for d in classify(status, body, count)]

    assert outcomes(200, '{"events": []}', 2) == [Outcome.DELIVERED] * 2
    for status in (500, 502, 503, 429, 408, 401, 403):
        assert outcomes(status, "", 2) == [Outcome.RETRY] * 2
    details = (
        '{"status":422,"error":"Unprocessable Entity","code":"validation_errors",'
        '"error_details":{"0":{"transaction_id":["value_already_exist"]},'
        '"2":{"code":["value_is_mandatory"]}}}'
    )
    result = classify(422, details, 3)
    assert [d.outcome for d in result] == [Outcome.DUPLICATE, Outcome.RESEND, Outcome.DEAD]
    assert result[0].delivered
    assert not result[1].delivered
    assert result[2].message is not None
    assert "value_is_mandatory" in result[2].message
    single_dup = '{"status":422,"code":"validation_errors","error_details":{"transaction_id":["value_already_exist"]}}'
    assert outcomes(422, single_dup, 1) == [Outcome.DUPLICATE]
    not_found = '{"status":404,"error":"Not Found","code":"billable_metric_not_found"}'
    dead = classify(404, not_found, 1)
    assert dead[0].outcome is Outcome.DEAD
    assert dead[0].message is not None
    assert "billable_metric_not_found" in dead[0].message
    assert outcomes(404, not_found, 3) == [Outcome.SPLIT] * 3
    assert (
        outcomes(422, '{"error_details":{"events":["too_many_events"]}}', 2) == [Outcome.SPLIT] * 2
    )


def test_batch_size_is_bounded_by_settings() -> None:
    with pytest.raises(ValueError, match="less than or equal to 100"):
        Settings(export_batch_size=101)
    assert Settings().export_batch_size == 100


# -- the fake behaves like Lago -------------------------------------------------------------


async def test_fake_lago_checks_auth_schema_size_and_duplicates(lago: ServerThread) -> None:
    url = lago.url + "/api/v1/events/batch"
    good = {"transaction_id": "t1", "external_subscription_id": "sb_x", "code": CODE}
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"events": [good]}) as resp:
            assert resp.status == 401
        async with http.post(
            url, json={"events": [good]}, headers={"Authorization": "Bearer wrong"}
        ) as resp:
            assert resp.status == 401
        many = [{**good, "transaction_id": f"m{i}"} for i in range(101)]
        async with http.post(url, json={"events": many}, headers=auth) as resp:
            assert resp.status == 422
            assert (await resp.json())["error_details"] == {"events": ["too_many_events"]}
        bad = {"transaction_id": "t2", "code": "", "timestamp": "soon"}
        async with http.post(url, json={"events": [good, bad]}, headers=auth) as resp:
            assert resp.status == 422
            body = await resp.json()
            assert body["code"] == "validation_errors"
            assert body["error_details"] == {
                "1": {
                    "code": ["value_is_mandatory"],
                    "external_subscription_id": ["value_is_mandatory"],
                    "timestamp": ["invalid_format"],
                }
            }
        assert state(lago).stored == []  # all or nothing
        async with http.post(url, json={"events": [good]}, headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.json())["events"][0]["transaction_id"] == "t1"
        async with http.post(url, json={"events": [good]}, headers=auth) as resp:
            assert resp.status == 422
            assert (await resp.json())["error_details"] == {
                "0": {"transaction_id": ["value_already_exist"]}
            }
    assert len(state(lago).stored) == 1
    assert state(lago).duplicates == 1


# -- the exporter ---------------------------------------------------------------------------


async def test_existing_rows_are_queued_by_the_migration(fresh_url: str) -> None:
    database = Database(fresh_url)
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0002"))
        tenant_id = await tenant(database)
        old = usage(tenant_id, 3)
        # Rows as the ledger held them at 0002: without the columns later migrations added.
        later = {
            "refusal_reason",
            "cached",
            "tokens_cached_input",
            "tokens_cache_write",
            "price_version",
            "billed_amount",
            "currency",
            "plan_version",
        }
        rows = [{k: v for k, v in e.as_row().items() if k not in later} for e in old]
        async with database.engine.begin() as conn:
            await conn.execute(sa.insert(usage_events), rows)
        await database.migrate()
        assert await export_states(database) == {e.request_id: "pending" for e in old}
        new = usage(tenant_id, 2)
        await UsageRepository(database).write(new + old[:1])  # a replay adds nothing
        states = await export_states(database)
        assert len(states) == 5
        assert set(states.values()) == {"pending"}
    finally:
        await database.dispose()


async def test_happy_path_delivers_and_never_touches_the_ledger(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    events = usage(tenant_id, 5)
    await UsageRepository(db).write(events)
    ledger_before = await UsageRepository(db).query(tenant_id)
    exporter = exporter_for(exporters, db, lago)

    stats = await exporter.run_once()
    assert (stats.claimed, stats.delivered, stats.retried, stats.dead) == (5, 5, 0, 0)
    assert (await exporter.run_once()).claimed == 0

    stored = state(lago).stored
    assert sorted(e["transaction_id"] for e in stored) == sorted(e.request_id for e in events)
    assert {e["external_subscription_id"] for e in stored} == {f"sb_{tenant_id}"}
    assert {e["code"] for e in stored} == {CODE}
    assert stored[0]["properties"]["total_tokens"] == 15
    assert stored[0]["properties"]["user"] == "alice"
    assert abs(stored[0]["timestamp"] - events[0].created_at.timestamp()) < 1
    assert set((await export_states(db)).values()) == {"sent"}
    assert (await exporter.backlog()).pending == 0
    assert await UsageRepository(db).query(tenant_id) == ledger_before


async def test_batches_hold_at_most_100_events(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    events = usage(tenant_id, 250)
    await UsageRepository(db).write(events)
    exporter = exporter_for(exporters, db, lago)
    assert await drain(exporter) == 3
    assert state(lago).batch_sizes == [100, 100, 50]
    assert len(state(lago).stored) == 250
    with pytest.raises(ValueError, match="batch_size"):
        exporter_for(exporters, db, lago, batch_size=101)
    with pytest.raises(ValueError, match="at most 100"):
        await LagoClient(lago.url, KEY).send([{}] * 101)


async def test_a_duplicate_counts_as_delivered_and_its_batch_is_resent(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    events = usage(tenant_id, 3)
    await UsageRepository(db).write(events)
    # Lago already has the first one (say the answer to an earlier send was lost).
    state(lago).keys.add((f"sb_{tenant_id}", events[0].request_id))
    exporter = exporter_for(exporters, db, lago)

    first = await exporter.run_once()
    assert (first.delivered, first.duplicates, first.resent, first.dead) == (1, 1, 2, 0)
    second = await exporter.run_once()
    assert (second.claimed, second.delivered) == (2, 2)
    assert sorted(e["transaction_id"] for e in state(lago).stored) == sorted(
        e.request_id for e in events[1:]
    )
    assert set((await export_states(db)).values()) == {"sent"}


async def test_an_invalid_event_is_dead_lettered_and_can_be_redriven(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    good = usage(tenant_id, 2)
    blank = usage(tenant_id, 1, request_id=" ")  # Lago refuses a blank transaction_id
    await UsageRepository(db).write(good + blank)
    exporter = exporter_for(exporters, db, lago)

    first = await exporter.run_once()
    assert (first.dead, first.resent, first.delivered) == (1, 2, 0)
    assert (await exporter.run_once()).delivered == 2
    dead = await exporter.dead_letters()
    assert [d["request_id"] for d in dead] == [" "]
    assert "value_is_mandatory" in dead[0]["error"]
    assert dead[0]["tenant_id"] == tenant_id

    # A batch-level refusal (404, say an unknown billable metric) of a single event: dead too.
    lone = usage(tenant_id, 1)
    await UsageRepository(db).write(lone)
    state(lago).fail_next = [404]
    assert (await exporter.run_once()).dead == 1
    backlog = await exporter.backlog()
    assert (backlog.pending, backlog.dead) == (0, 2)
    messages = {d["request_id"]: d["error"] for d in await exporter.dead_letters()}
    assert messages[lone[0].request_id].startswith("404")

    # Fixed on Lago's side: re-drive the one event, and it goes through.
    assert await exporter.redrive([lone[0].request_id]) == 1
    assert (await exporter.backlog()).pending == 1
    assert (await exporter.run_once()).delivered == 1
    # Re-driving the blank one changes nothing about it: it comes back dead.
    assert await exporter.redrive() == 1
    assert (await exporter.run_once()).dead == 1
    assert (await exporter.backlog()).dead == 1
    assert len(state(lago).stored) == 3


async def test_a_batch_refused_as_a_whole_is_sent_one_by_one(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    await UsageRepository(db).write(usage(tenant_id, 3))
    state(lago).fail_next = [400]
    stats = await exporter_for(exporters, db, lago).run_once()
    assert (stats.delivered, stats.dead) == (3, 0)
    assert state(lago).batch_sizes == [1, 1, 1]


async def test_backlog_lag_and_backoff(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    minute_ago = utcnow() - timedelta(seconds=60)
    await UsageRepository(db).write(usage(tenant_id, 3, at=minute_ago))
    exporter = exporter_for(exporters, db, lago, backoff_base=0.2, backoff_cap=0.2)

    backlog = await exporter.backlog()
    assert backlog.pending == 3
    assert backlog.dead == 0
    assert backlog.oldest_pending_at is not None
    assert abs((backlog.oldest_pending_at - minute_ago).total_seconds()) < 0.01
    assert 59 < backlog.lag_seconds() < 70

    state(lago).fail_next = [503]
    assert (await exporter.run_once()).retried == 3
    assert (await exporter.backlog()).pending == 3
    assert (await exporter.run_once()).claimed == 0  # backing off
    await asyncio.sleep(0.3)
    assert (await exporter.run_once()).delivered == 3
    after = await exporter.backlog()
    assert (after.pending, after.oldest_pending_at, after.lag_seconds()) == (0, None, 0.0)


async def test_unreachable_lago_is_retried(
    db: Database, exporters: list[LagoExporter], lago: ServerThread
) -> None:
    tenant_id = await tenant(db)
    await UsageRepository(db).write(usage(tenant_id, 2))
    nowhere = LagoExporter(db, LagoClient("http://127.0.0.1:9", KEY), metric_code=CODE)
    exporters.append(nowhere)
    stats = await nowhere.run_once()
    assert (stats.retried, stats.dead) == (2, 0)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(usage_exports))).mappings().all()
    assert {r["state"] for r in rows} == {"pending"}
    assert all("unreachable" in r["error"] for r in rows)


async def test_a_crashed_workers_claim_comes_back_after_the_lease(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    await UsageRepository(db).write(usage(tenant_id, 4))
    crashed = exporter_for(exporters, db, lago, lease=0.3)
    claimed, _ = await crashed._claim()  # claimed, then the process died before sending
    assert len(claimed) == 4
    survivor = exporter_for(exporters, db, lago)
    assert (await survivor.run_once()).claimed == 0
    await asyncio.sleep(0.4)
    assert (await survivor.run_once()).delivered == 4


async def test_lago_down_during_steady_traffic_then_back_delivers_exactly_once(
    db: Database, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    tenant_id = await tenant(db)
    repo = UsageRepository(db)
    exporter = exporter_for(
        exporters, db, lago, batch_size=20, interval=0.02, backoff_base=0.02, backoff_cap=0.1
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(exporter.run_forever(stop))
    written: list[str] = []
    peak_pending = 0
    try:
        for round_ in range(30):
            if round_ == 5:
                state(lago).down = True
            if round_ == 20:
                peak_pending = (await exporter.backlog()).pending
                state(lago).down = False
            batch = usage(tenant_id, 10)
            await repo.write(batch)
            written.extend(e.request_id for e in batch)
            await asyncio.sleep(0.03)
        for _ in range(200):  # at most ~10 s
            if (await exporter.backlog()).pending == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 5)

    assert peak_pending >= 100  # the outage really held events back
    assert state(lago).refused > 0
    stored = [e["transaction_id"] for e in state(lago).stored]
    assert len(stored) == len(written) == 300
    assert set(stored) == set(written)
    assert max(state(lago).received.values()) == 1
    assert state(lago).duplicates == 0
    backlog = await exporter.backlog()
    assert (backlog.pending, backlog.dead) == (0, 0)


@pytest.mark.postgres
async def test_concurrent_exporters_never_send_an_event_twice(
    pg_url: str, lago: ServerThread, exporters: list[LagoExporter]
) -> None:
    url, name = await _fresh(pg_url)
    replicas = [Database(url), Database(url)]
    try:
        await replicas[0].migrate()
        tenant_id = await tenant(replicas[0])
        events = usage(tenant_id, 400)
        await UsageRepository(replicas[0]).write(events)
        state(lago).delay = 0.005  # widen the window in which both replicas are claiming
        workers = [exporter_for(exporters, d, lago, batch_size=10) for d in replicas]

        async def work(exporter: LagoExporter) -> int:
            delivered = 0
            for _ in range(200):
                stats = await exporter.run_once()
                delivered += stats.delivered
                if stats.claimed == 0:
                    return delivered
            raise AssertionError("exporter did not finish")

        counts = await asyncio.gather(*(work(w) for w in workers))
        assert sum(counts) == 400
        assert min(counts) > 0  # both replicas really took part
        received = state(lago).received
        assert len(received) == 400
        assert max(received.values()) == 1  # sent once, not merely deduplicated by Lago
        assert state(lago).duplicates == 0
        assert len(state(lago).stored) == 400
    finally:
        for database in replicas:
            await database.dispose()
        if name is not None:
            await _pg(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

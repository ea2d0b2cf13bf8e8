"""Ledger benchmark: insert N usage events (default 1M) the way the gateway writes them, then
time the analytics, invoice, listing and reconcile queries, on SQLite and on PostgreSQL.

    python bench/ledger_bench.py                       # 1M rows, both databases
    python bench/ledger_bench.py --rows 100000 --db sqlite
    python bench/ledger_bench.py --wal                 # the write-ahead log's cost only

Rows: 50 tenants (one has a fifth of the traffic), 200 keys, 8 models on 3 providers, spread
over 30 days ending now, 3 % errors, log-normal latencies. Inserts go through
`UsageRepository.write` in batches of 500 (the recorder's batch size), so the export trigger
runs for every row, as in production. Each query runs 3 times; the median is printed.
PostgreSQL gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from switchboard.config import parse_config  # noqa: E402
from switchboard.metering.analytics import UsageQuery, UsageScope  # noqa: E402
from switchboard.metering.invoice import invoice_for  # noqa: E402
from switchboard.metering.reconcile import reconcile  # noqa: E402
from switchboard.metering.recorder import UsageRecorder  # noqa: E402
from switchboard.metering.usage import UsageEvent  # noqa: E402
from switchboard.metering.wal import UsageWal  # noqa: E402
from switchboard.platform import Platform  # noqa: E402
from switchboard.store import Database  # noqa: E402
from switchboard.store.analytics import AnalyticsRepository  # noqa: E402

MODELS = [
    ("gpt-4o", "openai", "gpt-4o"),
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("gpt-5", "openai", "gpt-5"),
    ("claude-sonnet", "anthropic", "claude-sonnet-4-5"),
    ("claude-haiku", "anthropic", "claude-haiku-4-5"),
    ("llama", "ollama", "llama3.1:8b"),
    ("embed", "openai", "text-embedding-3-small"),
    ("nova", "bedrock", "amazon.nova-lite-v1:0"),
]
CONFIG = """
providers:
  - {name: openai, kind: openai, base_url: "http://127.0.0.1:9/v1", locality: external}
  - {name: anthropic, kind: anthropic, base_url: "http://127.0.0.1:9", locality: external}
  - {name: ollama, kind: ollama, base_url: "http://127.0.0.1:9", locality: local}
  - {name: bedrock, kind: bedrock, region: us-east-1, locality: external}
models: []
"""
BATCH = 500


def events(tenants: list[str], keys: list[list[str]], count: int) -> Iterator[list[UsageEvent]]:
    """The events, in batches of `BATCH` (made as they are written, to bound memory)."""
    rng = random.Random(1)
    now = datetime.now(UTC)
    out: list[UsageEvent] = []
    weights = [10.0] + [40.0 / (len(tenants) - 1)] * (len(tenants) - 1)
    for i in range(count):
        t = rng.choices(range(len(tenants)), weights)[0]
        model, provider, upstream = MODELS[rng.randrange(len(MODELS))]
        failed = rng.random() < 0.03
        tokens_in, tokens_out = (0, 0) if failed else (rng.randint(5, 4000), rng.randint(1, 800))
        out.append(
            UsageEvent(
                request_id=f"req_bench_{i:09d}",
                tenant_id=tenants[t],
                key_id=rng.choice(keys[t]),
                created_at=now - timedelta(seconds=rng.uniform(0, 30 * 86400)),
                endpoint="chat.completions",
                model=model,
                user_id=f"user{rng.randrange(500)}",
                provider=provider,
                upstream_model=upstream,
                tokens_input=tokens_in,
                tokens_output=tokens_out,
                cost_usd=(tokens_in * 2.5 + tokens_out * 10) / 1e6,
                billed_amount=(tokens_in * 2.5 + tokens_out * 10) / 1e6 * 1.2,
                latency_ms=int(rng.lognormvariate(6, 0.8)),
                status=502 if failed else 200,
            )
        )
        if len(out) == BATCH:
            yield out
            out = []
    if out:
        yield out


async def timed(label: str, fn: Callable[[], Awaitable[Any]], runs: int = 3) -> float:
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        took.append(time.perf_counter() - start)
    median = statistics.median(took)
    print(f"  {label:<58} {median * 1000:>10.1f} ms")
    return median


async def bench(url: str, rows: int) -> None:
    db = Database(url)
    await db.migrate()
    platform = Platform(db)
    tenants, keys = [], []
    for n in range(50):
        tenant = await platform.tenants.create(f"bench-{n}", usage_mode="hybrid")
        tenants.append(tenant.id)
        keys.append([f"key_{n}_{k}" for k in range(4)])
    print(f"{db.dialect}: {rows:,} events")
    start = time.perf_counter()
    making = 0.0
    batches = events(tenants, keys, rows)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        making += time.perf_counter() - t0
        if batch is None:
            break
        await platform.usage.write(batch)
    took = time.perf_counter() - start - making
    print(f"  insert {rows:,} rows in batches of {BATCH}: {took:.1f} s = {rows / took:,.0f} rows/s")

    repo = AnalyticsRepository(db)
    big = tenants[0]
    now = datetime.now(UTC)
    month_start = now - timedelta(days=30)
    everything = UsageScope()

    def summary(query: UsageQuery) -> Callable[[], Awaitable[Any]]:
        return lambda: repo.summary(query, everything)

    await timed("all tenants, by tenant, 30 days", summary(UsageQuery(("tenant",))))
    await timed(
        "all tenants, by model+provider, 30 days", summary(UsageQuery(("model", "provider")))
    )
    await timed(
        "all tenants, by day, last 7 days",
        summary(UsageQuery(("day",), since=now - timedelta(days=7))),
    )
    await timed(
        "big tenant (20%), by model+day, 30 days",
        summary(UsageQuery(("model", "day"), since=month_start, tenant_id=big)),
    )
    await timed(
        "small tenant (0.8%), by model+day, 30 days",
        summary(UsageQuery(("model", "day"), since=month_start, tenant_id=tenants[7])),
    )
    await timed(
        "big tenant, by hour, last 24 h",
        summary(UsageQuery(("hour",), since=now - timedelta(days=1), tenant_id=big)),
    )
    await timed("big tenant, by key, 30 days", summary(UsageQuery(("key",), tenant_id=big)))
    month = now.strftime("%Y-%m")
    await timed(f"invoice preview, big tenant, {month}", lambda: invoice_for(platform, big, month))
    await timed(
        "usage listing, big tenant, newest 100", lambda: platform.usage.query(big, limit=100)
    )
    config = parse_config(CONFIG, source="<bench>")
    result: dict[str, Any] = {}

    async def rec() -> None:
        result["r"] = await reconcile(platform, config, big, month)

    await timed(f"reconcile big tenant {month}", rec, runs=1)
    print(f"    ({result['r'].events:,} rows checked)")
    await db.dispose()


async def with_pg(base: str, rows: int) -> None:
    name = f"sb_ledger_bench_{secrets.token_hex(4)}"
    admin = base.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        await bench(base.rsplit("/", 1)[0] + "/" + name, rows)
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


class _NullSink:
    async def write(self, events: Any) -> None:
        return None


async def wal_cost(count: int) -> None:
    """Cost of `UsageRecorder.record` without and with the write-ahead log (fsync every
    50 ms in a thread), and of sealing a segment (what each flush adds)."""
    sample = next(events(["ten_a", "ten_b"], [["key"], ["key"]], BATCH))[0]
    for label, wal in (("no WAL", None), ("WAL, fsync every 50 ms", True)):
        with tempfile.TemporaryDirectory() as tmp:
            log = UsageWal(Path(tmp), sync_interval=0.05) if wal else None
            recorder = UsageRecorder(
                _NullSink(), wal=log, flush_interval=3600, batch_size=10**9, buffer_limit=10**9
            )
            await recorder.start()
            start = time.perf_counter()
            for i in range(count):
                recorder.record(sample)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # let the fsync task run, as a server would
            took = time.perf_counter() - start
            seal = 0.0
            if log is not None:
                t0 = time.perf_counter()
                await log.seal()
                seal = time.perf_counter() - t0
            syncs = log.syncs if log is not None else 0
            await recorder.stop()
            print(
                f"  record(), {label:<24} {took / count * 1e6:6.2f} us/event "
                f"({count:,} events, {syncs} fsyncs, sealing {seal * 1000:.1f} ms)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--wal", action="store_true", help="Only the write-ahead log's cost.")
    args = parser.parse_args()
    if args.wal:
        asyncio.run(wal_cost(200_000))
        return
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(bench(f"sqlite+aiosqlite:///{tmp}/ledger.db", args.rows))
    if args.db in ("postgresql", "both"):
        asyncio.run(with_pg(args.pg_url, args.rows))


if __name__ == "__main__":
    main()

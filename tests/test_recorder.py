"""UsageRecorder: batches off the request path, retries a failing sink, loses nothing on stop."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from switchboard.metering.recorder import UsageRecorder
from switchboard.metering.spool import Spool
from switchboard.metering.usage import UsageEvent
from switchboard.store import Database, TenantRepository, UsageRepository

T0 = datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)


class MemorySink:
    """The sink contract: an async ``write`` of a batch. Fails while ``failures`` remain."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[UsageEvent]] = []
        self.failures = failures
        self.attempts = 0

    async def write(self, events: Sequence[UsageEvent]) -> None:
        self.attempts += 1
        if self.failures != 0:
            self.failures -= 1
            raise ConnectionError("database is down")
        self.batches.append(list(events))

    @property
    def events(self) -> list[UsageEvent]:
        return [e for batch in self.batches for e in batch]


def make_events(n: int, tenant_id: str = "ten_test") -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"req_{i}_{secrets.token_hex(4)}",
            tenant_id=tenant_id,
            key_id="key_x",
            created_at=T0 + timedelta(seconds=i),
            endpoint="chat",
            model="m",
            tokens_input=i,
            tokens_output=2 * i,
            cost_usd=i / 1e6,
            status=200,
        )
        for i in range(n)
    ]


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> float:
    """Seconds it took for ``condition`` to hold; fails the test after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
async def running() -> AsyncIterator[list[UsageRecorder]]:
    """Recorders a test starts; any still running at the end are stopped."""
    recorders: list[UsageRecorder] = []
    yield recorders
    for recorder in recorders:
        await recorder.stop(attempts=1)  # a second stop is harmless


async def test_full_batch_flushes_at_once_in_batches(running: list[UsageRecorder]) -> None:
    sink = MemorySink()
    recorder = UsageRecorder(sink, flush_interval=30, batch_size=3)
    running.append(recorder)
    await recorder.start()
    events = make_events(7)

    for e in events:
        recorder.record(e)

    took = await wait_until(lambda: len(sink.events) == 7)
    assert took < 1.0  # a full batch does not wait for the 30 s interval
    assert sink.events == events
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert recorder.written == 7
    assert recorder.pending == 0
    await recorder.stop()


async def test_partial_batch_waits_for_the_interval(running: list[UsageRecorder]) -> None:
    sink = MemorySink()
    recorder = UsageRecorder(sink, flush_interval=0.15, batch_size=100)
    running.append(recorder)
    await recorder.start()
    await asyncio.sleep(0.2)  # let the first interval pass with nothing to write
    assert sink.attempts == 0  # an empty buffer is not written

    events = make_events(2)
    for e in events:
        recorder.record(e)
    await asyncio.sleep(0.02)
    assert sink.events == []  # below batch size: not yet
    assert recorder.pending == 2

    await wait_until(lambda: len(sink.events) == 2, timeout=1.0)
    assert sink.events == events
    assert len(sink.batches) == 1
    await recorder.stop()


async def test_stop_drains_everything(running: list[UsageRecorder]) -> None:
    sink = MemorySink()
    recorder = UsageRecorder(sink, flush_interval=60, batch_size=4)
    running.append(recorder)
    await recorder.start()
    events = make_events(3)
    for e in events:
        recorder.record(e)

    start = time.monotonic()
    await recorder.stop()

    assert time.monotonic() - start < 1.0  # stop does not wait out the interval
    assert sink.events == events
    assert recorder.pending == 0
    assert recorder.written == 3
    assert recorder.dropped == 0


async def test_stop_without_start_still_drains() -> None:
    sink = MemorySink()
    recorder = UsageRecorder(sink, batch_size=2)
    events = make_events(5)
    for e in events:
        recorder.record(e)
    await recorder.stop()
    assert sink.events == events
    assert [len(b) for b in sink.batches] == [2, 2, 1]


async def test_failing_sink_keeps_events_and_retries(running: list[UsageRecorder]) -> None:
    sink = MemorySink(failures=-1)  # down until the test brings it back
    recorder = UsageRecorder(sink, flush_interval=0.02, batch_size=100)
    running.append(recorder)
    await recorder.start()
    events = make_events(4)
    for e in events:
        recorder.record(e)

    await wait_until(lambda: sink.attempts >= 2)  # it retried after the first failure
    assert sink.events == []
    assert recorder.pending == 4  # nothing was thrown away
    assert recorder.written == 0

    sink.failures = 0  # the database is back
    await wait_until(lambda: len(sink.events) == 4)
    assert sink.events == events  # each once, in order
    assert recorder.pending == 0
    assert recorder.written == 4
    assert recorder.dropped == 0
    await recorder.stop()
    assert sink.events == events


async def test_failure_mid_flush_does_not_duplicate(running: list[UsageRecorder]) -> None:
    class FailsSecondBatch(MemorySink):
        async def write(self, events: Sequence[UsageEvent]) -> None:
            self.attempts += 1
            if self.attempts == 2:
                raise ConnectionError("dropped mid-flush")
            self.batches.append(list(events))

    sink = FailsSecondBatch()
    recorder = UsageRecorder(sink, flush_interval=0.02, batch_size=2)
    running.append(recorder)
    events = make_events(5)
    for e in events:
        recorder.record(e)
    await recorder.start()

    await wait_until(lambda: len(sink.events) == 5)
    await recorder.stop()
    assert sink.events == events
    assert recorder.written == 5


async def test_stop_spools_what_cannot_be_written_and_start_replays(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool" / "usage-spool.jsonl"
    down = MemorySink(failures=-1)  # always fails
    first = UsageRecorder(down, spool=Spool(spool_path), flush_interval=60, batch_size=3)
    await first.start()
    events = make_events(5)
    for e in events:
        first.record(e)

    await first.stop(attempts=2)

    assert down.events == []
    assert down.attempts >= 2
    assert first.pending == 0
    assert first.dropped == 0  # spooled, not lost
    assert spool_path.exists()
    assert len(spool_path.read_bytes().splitlines()) == 5

    up = MemorySink()
    second = UsageRecorder(up, spool=Spool(spool_path), flush_interval=60, batch_size=100)
    await second.start()
    later = make_events(1)
    second.record(later[0])
    assert not spool_path.exists()  # claimed by this process
    await second.stop()

    assert up.events == [*events, *later]  # replayed first, each exactly once, fields intact
    assert up.events[0].created_at == T0
    assert up.events[0].created_at.tzinfo is not None
    assert not spool_path.exists()
    assert not spool_path.with_suffix(".replaying").exists()

    third_sink = MemorySink()
    third = UsageRecorder(third_sink, spool=Spool(spool_path))
    await third.start()
    await third.stop()
    assert third_sink.events == []  # nothing replayed twice


async def test_spool_appends_across_failed_stops(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "usage-spool.jsonl")
    batches = [make_events(2), make_events(3)]
    for batch in batches:
        recorder = UsageRecorder(MemorySink(failures=-1), spool=spool)
        for e in batch:
            recorder.record(e)
        await recorder.stop(attempts=1)

    up = MemorySink()
    recorder = UsageRecorder(up, spool=spool)
    await recorder.start()
    await recorder.stop()
    assert up.events == batches[0] + batches[1]


async def test_stop_without_spool_counts_lost_events() -> None:
    recorder = UsageRecorder(MemorySink(failures=-1))
    for e in make_events(3):
        recorder.record(e)
    await recorder.stop(attempts=1)
    assert recorder.pending == 0
    assert recorder.dropped == 3
    assert recorder.written == 0


async def test_buffer_limit_drops_and_counts() -> None:
    sink = MemorySink()
    recorder = UsageRecorder(sink, flush_interval=60, batch_size=100, buffer_limit=5)
    events = make_events(8)
    for e in events:
        recorder.record(e)

    assert recorder.pending == 5
    assert recorder.dropped == 3

    await recorder.stop()
    assert sink.events == events[:5]  # the oldest are kept, the overflow is dropped
    assert recorder.dropped == 3


# -- with the real repository -----------------------------------------------------------------


@pytest.fixture
async def sqlite_repo(tmp_path: Path) -> AsyncIterator[tuple[UsageRepository, str]]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}")
    try:
        await db.migrate()
        tenant = await TenantRepository(db).create("recorder", usage_mode="hybrid")
        yield UsageRepository(db), tenant.id
    finally:
        await db.dispose()


async def test_recorder_writes_to_the_database(
    sqlite_repo: tuple[UsageRepository, str], running: list[UsageRecorder]
) -> None:
    repo, tenant_id = sqlite_repo
    recorder = UsageRecorder(repo, flush_interval=0.02, batch_size=2)
    running.append(recorder)
    await recorder.start()
    events = make_events(5, tenant_id)
    for e in events[:3]:
        recorder.record(e)
    await wait_until(lambda: recorder.written == 3)
    for e in events[3:]:
        recorder.record(e)
    await recorder.stop()

    rows = await repo.query(tenant_id)
    assert [r["request_id"] for r in rows] == [e.request_id for e in reversed(events)]
    assert rows[-1] == events[0].as_row()


async def test_spool_replay_into_the_database_is_idempotent(
    sqlite_repo: tuple[UsageRepository, str], tmp_path: Path
) -> None:
    repo, tenant_id = sqlite_repo
    events = make_events(4, tenant_id)
    await repo.write(events[:2])  # half of them landed before the database went away
    spool = Spool(tmp_path / "usage-spool.jsonl")
    failing = UsageRecorder(MemorySink(failures=-1), spool=spool)
    for e in events:
        failing.record(e)
    await failing.stop(attempts=1)

    recorder = UsageRecorder(repo, spool=spool)
    await recorder.start()
    await recorder.stop()

    rows = await repo.query(tenant_id)
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in events)
    assert {r["request_id"]: r for r in rows} == {e.request_id: e.as_row() for e in events}

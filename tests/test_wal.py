"""The usage write-ahead log: events survive a hard kill of the gateway (SIGKILL, with a flush
interval longer than the test) and are written once at the next start; segments are deleted
once their events are in the database; live processes keep their own segments. Segments are
memory maps of preallocated files: full ones roll over, sealed ones are cut to their events,
and every layout a crash can leave (zero padding, torn lines, the older plain-write files)
replays."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import ADMIN_KEY, gateway_config, ledger_rows, start_gateway
from fakes.server import ServerThread
from switchboard.metering.recorder import UsageRecorder
from switchboard.metering.usage import UsageEvent
from switchboard.metering.wal import UsageWal
from switchboard.store.database import utcnow


class Sink:
    def __init__(self, *, failing: bool = False) -> None:
        self.failing = failing
        self.written: list[str] = []

    async def write(self, events: Sequence[UsageEvent]) -> None:
        if self.failing:
            raise ConnectionError("database down")
        self.written.extend(e.request_id for e in events)


def event(n: int, *, error: str | None = None) -> UsageEvent:
    return UsageEvent(
        request_id=f"req_wal_{n}",
        tenant_id="ten_x",
        key_id=None,
        created_at=utcnow(),
        endpoint="chat.completions",
        model="m",
        tokens_input=n,
        error=error,
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def lines(path: Path) -> list[bytes]:
    """The event lines of a segment (a segment not yet sealed is padded with zero bytes)."""
    return path.read_bytes().rstrip(b"\0").splitlines()


def replay(directory: Path) -> list[str]:
    """What a new process replays from ``directory`` (then it stops and keeps nothing)."""
    wal = UsageWal(directory)
    replayed = [e.request_id for e in wal.open()]
    wal.close(keep=False)
    return replayed


def crash(wal: UsageWal) -> None:
    """What the kernel does to a killed process: its files close, its lock goes away."""
    assert wal._lock is not None
    wal._lock.close()
    wal._lock = None


async def test_events_of_a_dead_process_are_replayed_once(tmp_path: Path) -> None:
    down = Sink(failing=True)
    first_wal = UsageWal(tmp_path, sync_interval=0.01)
    first = UsageRecorder(down, wal=first_wal, flush_interval=3600)
    await first.start()
    for n in range(10):
        first.record(event(n))
    assert not await first.flush()  # the database is down: the segment stays
    first.record(event(10))
    await first_wal.sync()
    assert sum(len(lines(p)) for p in segments(tmp_path)) == 11
    crash(first_wal)

    sink = Sink()
    second_wal = UsageWal(tmp_path)
    second = UsageRecorder(sink, wal=second_wal, flush_interval=3600)
    await second.start()
    assert second.pending == 11
    assert await second.flush()
    assert sink.written == [f"req_wal_{n}" for n in range(11)]
    # Only this process's fresh, empty segment is left; the dead owner's lock is gone.
    (left,) = segments(tmp_path)
    assert left.name.startswith(second_wal.owner)
    assert left.read_bytes().strip(b"\0") == b""  # preallocated, no event in it
    assert [p.name for p in tmp_path.glob("*.lock")] == [f"{second_wal.owner}.lock"]
    await second.stop()
    assert segments(tmp_path) == []


async def test_a_live_process_keeps_its_segments(tmp_path: Path) -> None:
    live_wal = UsageWal(tmp_path)
    live = UsageRecorder(Sink(failing=True), wal=live_wal, flush_interval=3600)
    await live.start()
    live.record(event(1))
    other = UsageWal(tmp_path)
    assert other.open() == []  # the live owner's events are not taken
    other.close(keep=False)
    assert len(segments(tmp_path)) == 1
    await live.stop(attempts=1)  # still down: the event stays in the log
    again = UsageWal(tmp_path)
    assert [e.request_id for e in again.open()] == ["req_wal_1"]
    again.close(keep=True)


@pytest.mark.parametrize("padded", [True, False], ids=["zero-padded", "cut"])
async def test_a_torn_last_line_is_skipped(tmp_path: Path, padded: bool) -> None:
    wal = UsageWal(tmp_path)
    wal.open()
    wal.append(event(1))
    wal.append(event(2))
    crash(wal)
    (segment,) = segments(tmp_path)
    data = segment.read_bytes()
    used = len(data.rstrip(b"\0"))
    assert len(data) == wal.segment_bytes  # preallocated,
    assert used < len(data)  # zero-padded
    if padded:  # killed in the middle of copying the line into the map
        segment.write_bytes(data[: used - 20] + bytes(len(data) - used + 20))
    else:  # a file cut in the middle of a line, as a kill mid-write left the older segments
        segment.write_bytes(data[: used - 20])
    assert replay(tmp_path) == ["req_wal_1"]


async def test_an_unsealed_zero_padded_segment_replays(tmp_path: Path) -> None:
    wal = UsageWal(tmp_path)
    wal.open()
    for n in range(3):
        wal.append(event(n))
    await wal.sync()  # synced, not sealed: the file keeps its preallocated size
    assert wal.syncs == 1
    crash(wal)
    (segment,) = segments(tmp_path)
    assert segment.stat().st_size == wal.segment_bytes
    assert replay(tmp_path) == ["req_wal_0", "req_wal_1", "req_wal_2"]


async def test_zeros_between_lines_are_skipped(tmp_path: Path) -> None:
    """After a power loss, pages of the map may have reached the disk in any order: a page
    that did not reads as zeros, between lines that did."""
    wal = UsageWal(tmp_path)
    wal.open()
    for n in range(3):
        wal.append(event(n))
    crash(wal)
    (segment,) = segments(tmp_path)
    first, second, third = lines(segment)
    gap = bytes(len(second) + 1)  # the second line and its newline never reached the disk
    segment.write_bytes(first + b"\n" + gap + third + b"\n")
    assert replay(tmp_path) == ["req_wal_0", "req_wal_2"]
    gap = bytes(len(second) - 10)  # the zeros end in the middle of the second line
    segment.write_bytes(first + b"\n" + gap + second[-10:] + b"\n" + third + b"\n")
    assert replay(tmp_path) == ["req_wal_0", "req_wal_2"]


async def test_segments_of_the_older_write_format_replay(tmp_path: Path) -> None:
    """Segments written before the log was a memory map: plain JSON lines, no padding."""
    old = tmp_path / "0123456789ab.0000000001.jsonl"
    fd = os.open(old, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for n in range(3):
        os.write(fd, orjson.dumps(event(n).as_row()) + b"\n")
    os.close(fd)
    (tmp_path / "0123456789ab.lock").write_bytes(b"")  # its process is gone
    assert replay(tmp_path) == ["req_wal_0", "req_wal_1", "req_wal_2"]
    assert segments(tmp_path) == []


async def test_sealing_cuts_a_segment_to_its_events(tmp_path: Path) -> None:
    wal = UsageWal(tmp_path)
    wal.open()
    events = [event(n) for n in range(5)]
    for e in events:
        wal.append(e)
    rows = [orjson.dumps(e.as_row()) + b"\n" for e in events]
    (sealed,) = await wal.seal()
    assert sealed.read_bytes() == b"".join(rows)  # no padding left
    assert await wal.seal() == [sealed]  # nothing appended since: the current segment stays
    (current,) = (p for p in segments(tmp_path) if p != sealed)
    assert current.stat().st_size == wal.segment_bytes
    wal.committed([sealed])
    assert not sealed.exists()
    wal.close(keep=True)
    assert current.read_bytes() == b""  # closing cuts the current segment too


async def test_events_appended_while_sealing_are_in_the_sealed_segments(tmp_path: Path) -> None:
    """The next segment is created in a thread: what is appended meanwhile still goes to the
    segment being sealed, which seal returns (the recorder counts its buffer after)."""
    wal = UsageWal(tmp_path)
    wal.open()
    wal.append(event(1))
    sealing = asyncio.create_task(wal.seal())
    await asyncio.sleep(0)  # seal is waiting for its thread
    wal.append(event(2))
    (sealed,) = await sealing
    assert [orjson.loads(line)["request_id"] for line in lines(sealed)] == [
        "req_wal_1",
        "req_wal_2",
    ]
    wal.append(event(3))
    crash(wal)
    assert replay(tmp_path) == ["req_wal_1", "req_wal_2", "req_wal_3"]


async def test_a_full_segment_rolls_over(tmp_path: Path) -> None:
    wal = UsageWal(tmp_path, segment_bytes=4096)  # one page: a few events per segment
    wal.open()
    big = "x" * 10_000  # larger than a whole segment
    expected = []
    for n in range(30):
        wal.append(event(n, error=big if n in (7, 8) else None))
        expected.append(f"req_wal_{n}")
    files = segments(tmp_path)
    assert len(files) > 3
    assert max(p.stat().st_size for p in files) == 12_288  # the large events: 3 pages each
    assert wal.appended == 30
    crash(wal)  # a kill before any sync or seal: everything is in the page cache
    assert replay(tmp_path) == expected


async def test_sync_finishes_full_segments_and_seal_returns_them(tmp_path: Path) -> None:
    wal = UsageWal(tmp_path, segment_bytes=4096)
    wal.open()
    for n in range(20):
        wal.append(event(n))
    full = segments(tmp_path)[:-1]
    assert full
    assert all(p.stat().st_size == 4096 for p in full)  # mapped, not yet finished
    await wal.sync()
    for p in full:  # cut to their events
        assert p.read_bytes() == b"\n".join(lines(p)) + b"\n"
    sealed = await wal.seal()
    assert sealed == segments(tmp_path)[:-1]
    ids = [orjson.loads(line)["request_id"] for p in sealed for line in lines(p)]
    assert ids == [f"req_wal_{n}" for n in range(20)]
    wal.committed(sealed)
    wal.close(keep=False)
    assert list(tmp_path.iterdir()) == []


async def test_a_full_disk_keeps_the_event_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No room for the next segment: the recorder logs it and keeps the event buffered, and
    the log starts a segment again once there is room."""
    sink = Sink()
    wal = UsageWal(tmp_path)
    recorder = UsageRecorder(sink, wal=wal, flush_interval=3600)
    await recorder.start()
    recorder.record(event(1))

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with caplog.at_level(logging.ERROR, logger="switchboard.metering"):
        assert await recorder.flush()  # seals; the next segment cannot be created
        recorder.record(event(2))
    assert "starting a usage WAL segment failed" in caplog.text
    assert "appending usage event req_wal_2 to the WAL failed" in caplog.text
    assert recorder.pending == 1
    monkeypatch.undo()
    recorder.record(event(3))
    (current,) = segments(tmp_path)  # a new segment, holding the event
    assert len(lines(current)) == 1
    await recorder.stop()
    assert sink.written == ["req_wal_1", "req_wal_2", "req_wal_3"]
    assert list(tmp_path.iterdir()) == []


async def test_graceful_stop_leaves_no_segments(tmp_path: Path) -> None:
    sink = Sink()
    recorder = UsageRecorder(sink, wal=UsageWal(tmp_path), flush_interval=0.01)
    await recorder.start()
    for n in range(50):
        recorder.record(event(n))
        if n % 10 == 0:
            await asyncio.sleep(0.02)
    await recorder.stop()
    assert len(sink.written) == 50
    assert list(tmp_path.iterdir()) == []


# -- the real thing: SIGKILL a serving gateway ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_killed_gateway_loses_no_usage(
    tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"""
providers:
  - {{name: ollama-fake, kind: ollama, base_url: "{fake_ollama.url}", locality: local}}
models:
  - name: llama-fake
    deployments: [{{provider: ollama-fake, model: "llama3.1:8b"}}]
"""
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env |= {
        "SWITCHBOARD_DATA_DIR": str(tmp_path),
        "SWITCHBOARD_DATABASE_URL": url,
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SWITCHBOARD_USAGE_FLUSH_INTERVAL_SECONDS": "3600",
        "SWITCHBOARD_USAGE_BATCH_SIZE": "10000",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switchboard",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        tenant = httpx.post(base + "/admin/v1/tenants", json={"slug": "killed"}, headers=admin)
        key = httpx.post(base + "/admin/v1/tenants/killed/keys", json={}, headers=admin)
        headers = {"Authorization": f"Bearer {key.json()['key']}"}
        ids = []
        for n in range(20):
            reply = httpx.post(
                base + "/v1/chat/completions",
                headers=headers,
                json={"model": "llama-fake", "messages": [{"role": "user", "content": f"{n}"}]},
                timeout=10,
            )
            assert reply.status_code == 200
            ids.append(reply.headers["x-request-id"])
        tenant_id = tenant.json()["id"]
        assert asyncio.run(ledger_rows(url, tenant_id)) == []  # all still buffered
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert asyncio.run(ledger_rows(url, tenant_id)) == []  # the kill lost the buffer...

    gw = gateway_config(fake_openai.url, fake_ollama.url)
    server, _app = start_gateway(tmp_path, url, gw)
    with server:  # ...and the next start replays the log
        deadline = time.monotonic() + 10
        while len(rows := asyncio.run(ledger_rows(url, tenant_id))) < len(ids):
            assert time.monotonic() < deadline, f"{len(rows)} of {len(ids)} events replayed"
            time.sleep(0.1)
    assert sorted(str(r["request_id"]) for r in rows) == sorted(ids)
    assert list((tmp_path / "usage-wal").glob("*.jsonl")) == []

"""The usage write-ahead log: events survive a hard kill of the gateway (SIGKILL, with a flush
interval longer than the test) and are written once at the next start; segments are deleted
once their events are in the database; live processes keep their own segments."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
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


def event(n: int) -> UsageEvent:
    return UsageEvent(
        request_id=f"req_wal_{n}",
        tenant_id="ten_x",
        key_id=None,
        created_at=utcnow(),
        endpoint="chat.completions",
        model="m",
        tokens_input=n,
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


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
    assert sum(len(p.read_bytes().splitlines()) for p in segments(tmp_path)) == 11
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
    assert left.read_bytes() == b""
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


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    wal = UsageWal(tmp_path)
    wal.open()
    wal.append(event(1))
    wal.append(event(2))
    crash(wal)
    (segment,) = segments(tmp_path)
    segment.write_bytes(segment.read_bytes()[:-20])  # killed in the middle of a write
    replayed = UsageWal(tmp_path)
    assert [e.request_id for e in replayed.open()] == ["req_wal_1"]
    replayed.close(keep=False)


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

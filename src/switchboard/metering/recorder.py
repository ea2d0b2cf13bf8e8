"""Writes usage events off the request path, in batches; loses none on a graceful stop, and
with the write-ahead log none on a hard kill either.

`record` is synchronous and O(1): it appends to an in-memory buffer (and, with a `UsageWal`,
one line to the log file). A background task writes the buffer to the sink every
``flush_interval`` seconds, or sooner when a batch fills; each flush seals the log segment
holding those events and deletes it once they are written. While the sink fails, events stay
buffered (up to ``buffer_limit``) and the write is retried with backoff. `stop` drains the
buffer; what still cannot be written stays in the log (or, without one, goes to a spool file),
and `start` replays it the next time the process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from switchboard.metering.spool import Spool
from switchboard.metering.usage import UsageEvent
from switchboard.metering.wal import UsageWal

log = logging.getLogger("switchboard.metering")


class UsageSink(Protocol):
    async def write(self, events: Sequence[UsageEvent]) -> None: ...


class UsageRecorder:
    def __init__(
        self,
        sink: UsageSink,
        *,
        spool: Spool | None = None,
        wal: UsageWal | None = None,
        flush_interval: float = 0.5,
        batch_size: int = 500,
        buffer_limit: int = 200_000,
    ) -> None:
        self._sink = sink
        self._spool = spool
        self._wal = wal
        self._wal_stop = asyncio.Event()
        self._wal_task: asyncio.Task[None] | None = None
        self._interval = flush_interval
        self._batch = batch_size
        self._limit = buffer_limit
        self._buffer: list[UsageEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, event: UsageEvent) -> None:
        if len(self._buffer) >= self._limit:
            self.dropped += 1
            log.error(
                "usage buffer full (%d events); event %s dropped", self._limit, event.request_id
            )
            return
        if self._wal is not None:
            try:
                self._wal.append(event)
            except OSError:
                log.exception("appending usage event %s to the WAL failed", event.request_id)
        self._buffer.append(event)
        if len(self._buffer) >= self._batch:
            self._wake.set()

    async def start(self) -> None:
        if self._wal is not None:
            replayed = self._wal.open()
            if replayed:
                log.info("replaying %d usage events from the WAL", len(replayed))
                self._buffer[:0] = replayed
            self._wal_task = asyncio.create_task(
                self._wal.sync_forever(self._wal_stop), name="usage-wal-sync"
            )
        if self._spool is not None:
            replayed = self._spool.take()
            if replayed:
                log.info("replaying %d spooled usage events", len(replayed))
                self._buffer[:0] = replayed
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self, *, attempts: int = 3) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        for attempt in range(attempts):
            if not self._buffer or await self.flush():
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        left = len(self._buffer)
        if self._wal is not None:
            self._wal_stop.set()
            if self._wal_task is not None:
                await self._wal_task
            self._wal.close(keep=bool(left))
            if left:
                log.warning(
                    "database unreachable: %d usage events stay in the WAL at %s",
                    left,
                    self._wal.directory,
                )
                self._buffer.clear()
        if self._buffer:
            if self._spool is not None:
                self._spool.put(self._buffer)
                log.warning(
                    "database unreachable: %d usage events spooled to %s",
                    len(self._buffer),
                    self._spool.path,
                )
            else:
                self.dropped += len(self._buffer)
                log.error("database unreachable: %d usage events lost", len(self._buffer))
            self._buffer.clear()

    async def flush(self) -> bool:
        """Write everything buffered; False when the sink failed (the events stay).

        With a WAL, the segments holding the buffered events are sealed first and deleted once
        every one of those events is written."""
        while self._buffer:
            sealed = await self._wal.seal() if self._wal is not None else None
            count = len(self._buffer)  # all of these are in the sealed segments
            while count:
                batch = self._buffer[: min(self._batch, count)]
                try:
                    await self._sink.write(batch)
                except Exception:  # any sink failure keeps the events for the next try
                    log.exception("writing %d usage events failed; will retry", len(batch))
                    return False
                del self._buffer[: len(batch)]
                count -= len(batch)
                self.written += len(batch)
            if sealed is not None and self._wal is not None:
                self._wal.committed(sealed)
        return True

    async def _run(self) -> None:
        backoff = self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            if self._stopping:
                return
            ok = await self.flush()
            backoff = self._interval if ok else min(backoff * 2, 30.0)

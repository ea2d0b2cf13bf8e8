"""Writes usage events off the request path, in batches; loses none on a graceful stop.

`record` is synchronous and O(1): it appends to an in-memory buffer. A background task writes
the buffer to the sink every ``flush_interval`` seconds, or sooner when a batch fills. While the
sink fails, events stay buffered (up to ``buffer_limit``) and the write is retried with backoff.
`stop` drains the buffer; what still cannot be written then is appended to a spool file, which
`start` replays the next time the process starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from switchboard.metering.spool import Spool
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.metering")


class UsageSink(Protocol):
    async def write(self, events: Sequence[UsageEvent]) -> None: ...


class UsageRecorder:
    def __init__(
        self,
        sink: UsageSink,
        *,
        spool: Spool | None = None,
        flush_interval: float = 0.5,
        batch_size: int = 500,
        buffer_limit: int = 200_000,
    ) -> None:
        self._sink = sink
        self._spool = spool
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
        self._buffer.append(event)
        if len(self._buffer) >= self._batch:
            self._wake.set()

    async def start(self) -> None:
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
        """Write everything buffered; False when the sink failed (the events stay)."""
        while self._buffer:
            batch = self._buffer[: self._batch]
            try:
                await self._sink.write(batch)
            except Exception:  # any sink failure keeps the events for the next try
                log.exception("writing %d usage events failed; will retry", len(batch))
                return False
            del self._buffer[: len(batch)]
            self.written += len(batch)
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

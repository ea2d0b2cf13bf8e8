"""The usage write-ahead log: closes the window in which a hard kill loses usage events.

Every event the recorder accepts is appended to a local segment file (one JSON line, one
``write`` system call) before `UsageRecorder.record` returns, so once a request is metered its
event is in the kernel: a killed process (SIGKILL, OOM) loses nothing. A background task
``fsync``s the segment every ``sync_interval`` seconds (50 ms by default) when something was
appended, which bounds what a power loss or kernel crash can take to that interval.

Each flush of the recorder seals the current segment (fsync, close, start the next one); once
every event of the sealed segments is in the database, they are deleted. At start, a process
replays the segments no live process owns: those of a process that died, found through
per-process lock files (``flock``: the kernel releases the lock of a dead process). Replaying
an event that did reach the database is harmless: the ledger skips request ids it has.

Layout under the directory: ``<owner>.lock`` (held for the life of the process) and
``<owner>.<seq>.jsonl`` segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from switchboard.metering.spool import event_from_line
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.metering")


class UsageWal:
    def __init__(self, directory: Path, *, sync_interval: float = 0.05) -> None:
        self.directory = directory
        self.sync_interval = sync_interval
        self.owner = secrets.token_hex(6)
        self._seq = 0
        self._fd: int | None = None
        self._lock: IO[bytes] | None = None
        self._sealed: list[Path] = []  # closed segments not yet known to be in the database
        self._dirty = False
        self.appended = 0
        self.syncs = 0

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> list[UsageEvent]:
        """Take this process's lock, adopt the segments of dead owners, and return their
        events (oldest first) for the recorder to write again."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = (self.directory / f"{self.owner}.lock").open("wb")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = lock
        adopted = self._adopt()
        events = [e for path in adopted for e in _read(path)]
        self._sealed.extend(adopted)
        self._start_segment()
        return events

    def close(self, *, keep: bool) -> None:
        """Stop: sync and close; ``keep`` False deletes every segment (all events are in the
        database), True leaves them for the next start to replay."""
        self._seal_current()
        if not keep:
            self._delete(self._sealed)
            self._sealed = []
        if self._lock is not None:
            lock_path = self.directory / f"{self.owner}.lock"
            if not keep:
                lock_path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    # -- the hot path -----------------------------------------------------------------------

    def append(self, event: UsageEvent) -> None:
        if self._fd is None:
            raise RuntimeError("the usage WAL is not open")
        os.write(self._fd, orjson.dumps(event.as_row()) + b"\n")
        self._dirty = True
        self.appended += 1

    # -- sealing and truncation -------------------------------------------------------------

    async def seal(self) -> list[Path]:
        """Close the current segment (fsync in a thread, off the event loop) and start the
        next; returns every sealed segment not yet deleted: the events buffered now are all
        in those segments."""
        fd, dirty = self._fd, self._dirty
        self._fd, self._dirty = None, False
        self._start_segment_after(fd)
        if fd is not None:
            if dirty:
                await asyncio.to_thread(os.fsync, fd)
            os.close(fd)
        return list(self._sealed)

    def committed(self, sealed: list[Path]) -> None:
        """The events of ``sealed`` are in the database: delete those segments."""
        self._delete(sealed)
        done = set(sealed)
        self._sealed = [p for p in self._sealed if p not in done]

    async def sync_forever(self, stop: asyncio.Event) -> None:
        """fsync the current segment every ``sync_interval`` seconds while appends happen."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sync_interval)
            await self.sync()

    async def sync(self) -> None:
        fd = self._fd
        if fd is None or not self._dirty:
            return
        self._dirty = False
        try:
            await asyncio.to_thread(os.fsync, fd)
            self.syncs += 1
        except OSError:  # the segment was sealed (closed) meanwhile; sealing synced it
            return

    # -- internals --------------------------------------------------------------------------

    def _start_segment_after(self, fd: int | None) -> None:
        if fd is not None:
            self._sealed.append(self._current)
        self._start_segment()

    def _start_segment(self) -> None:
        self._seq += 1
        path = self.directory / f"{self.owner}.{self._seq:010d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._current = path

    def _seal_current(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._dirty:
            os.fsync(fd)
            self._dirty = False
        os.close(fd)
        self._sealed.append(self._current)

    def _adopt(self) -> list[Path]:
        """Segments whose owner is not alive (no lock file, or one nobody holds)."""
        dead = []
        owners = {p.name.split(".", 1)[0] for p in self.directory.glob("*.jsonl")}
        for owner in sorted(owners - {self.owner}):
            if _alive(self.directory / f"{owner}.lock"):
                continue
            dead.append(owner)
        segments = sorted(p for o in dead for p in self.directory.glob(f"{o}.*.jsonl"))
        for owner in dead:
            (self.directory / f"{owner}.lock").unlink(missing_ok=True)
        if segments:
            log.info("replaying %d usage WAL segments of stopped processes", len(segments))
        return segments

    @staticmethod
    def _delete(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)


def _alive(lock_path: Path) -> bool:
    """Whether a live process holds ``lock_path``."""
    try:
        fh = lock_path.open("rb")
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


def _read(path: Path) -> Iterator[UsageEvent]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # another process adopted and committed it first
        return
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            yield event_from_line(line)
        except (ValueError, TypeError):  # a torn last line from a crash mid-write
            log.warning("skipping an unreadable line in %s", path.name)

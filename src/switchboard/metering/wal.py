"""The usage write-ahead log: closes the window in which a hard kill loses usage events.

Every event the recorder accepts is in a local segment file before `UsageRecorder.record`
returns. Appending makes no system call: the JSON line is copied into a shared, writable memory
map of the segment (``MAP_SHARED``), whose pages are the file's own pages in the kernel's page
cache. So once a request is metered its event is in the kernel: a killed process (SIGKILL, OOM)
loses nothing, the kernel writes those pages back to the file.

A background task fsyncs the segment every ``sync_interval`` seconds (50 ms by default) when
something was appended, in a thread, which bounds what a power loss or kernel crash can take
to that interval. ``fsync`` of the file writes back the pages dirtied through the map as well:
on Linux ``msync(MS_SYNC)`` is itself an fsync of the mapped range of the file, and unlike
``mmap.flush``, which holds the GIL through ``msync`` (CPython 3.11), ``os.fsync`` lets the event
loop run meanwhile.

Segments are preallocated to ``segment_bytes`` (4 MiB by default), on Linux with
``posix_fallocate``, so that a full disk shows as an ``OSError`` when a segment is created (the
recorder logs it and keeps the event in memory) rather than as a SIGBUS on the first write to a
page of the map. Past the bytes written, a segment holds zero bytes. An event larger than the room
left goes to a new segment (as large as the event when it needs more than ``segment_bytes``);
the full one is finished (fsynced, truncated, closed) in a thread by the next sync or seal.

Each flush of the recorder seals the current segment when it holds events: fsync, truncate to
the bytes written, close, start the next one; once every event of the sealed segments is in the
database, they are deleted. At start, a process replays the segments no live process owns:
those of a process that died, found through per-process lock files (``flock``: the kernel
releases the lock of a dead process). Reading skips zero bytes and lines that do not parse (a
line torn by a kill in the middle of a copy, or pages a power loss did not write), so sealed
segments, unsealed ones and those of earlier versions (plain JSON lines, one ``write`` each)
replay alike. Replaying an event that did reach the database is harmless: the ledger skips
request ids it has.

Layout under the directory: ``<owner>.lock`` (held for the life of the process) and
``<owner>.<seq>.jsonl`` segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from switchboard.metering.spool import event_from_line
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.metering")

DEFAULT_SEGMENT_BYTES = 4 << 20


class _Segment:
    """One segment file, mapped; ``pos`` bytes are written, ``synced`` of them fsynced."""

    __slots__ = ("fd", "map", "path", "pos", "size", "synced")

    def __init__(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _preallocate(fd, size)
            self.map = mmap.mmap(fd, size)  # MAP_SHARED, readable and writable
            # The first write to a page faults it in: read that page only. With the default
            # read-around the first fault reads the whole file's worth of zero pages, which
            # takes milliseconds with a large read-ahead (8 MiB on some cloud disks).
            self.map.madvise(mmap.MADV_RANDOM)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.fd = fd
        self.path = path
        self.size = size
        self.pos = 0
        self.synced = 0

    def sync(self) -> None:
        os.fsync(self.fd)

    def finish(self) -> None:
        """Unmap, cut the file to the bytes written, fsync, close (in a thread, or at stop)."""
        try:
            self.map.close()  # the dirty pages stay in the page cache; fsync writes them
            os.ftruncate(self.fd, self.pos)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


class UsageWal:
    def __init__(
        self,
        directory: Path,
        *,
        sync_interval: float = 0.05,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = directory
        self.sync_interval = sync_interval
        self.segment_bytes = _whole_pages(segment_bytes)
        self.owner = secrets.token_hex(6)
        self._seq = 0
        self._segment: _Segment | None = None
        self._retired: list[_Segment] = []  # full or sealed, not yet finished
        self._io = asyncio.Lock()  # one thread at a time syncs or finishes segments
        self._lock: IO[bytes] | None = None
        self._sealed: list[Path] = []  # closed segments not yet known to be in the database
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
        self._segment = self._new_segment(0)
        return events

    def close(self, *, keep: bool) -> None:
        """Stop: finish every segment (fsync, truncate, close); ``keep`` False deletes them
        all (all events are in the database), True leaves them for the next start to replay."""
        if self._segment is not None:
            self._retire(self._segment)
            self._segment = None
        retired, self._retired = self._retired, []
        _finish_all(retired)
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
        """Copy one JSON line into the mapped segment; no system call unless the segment is
        full (then the next one is created). Raises OSError when no segment can be created."""
        line = orjson.dumps(event.as_row()) + b"\n"
        segment = self._segment
        if segment is None:
            segment = self._reopen()
        start = segment.pos
        end = start + len(line)
        if end > segment.size:
            segment = self._roll(len(line))
            start, end = 0, len(line)
        segment.map[start:end] = line
        segment.pos = end
        self.appended += 1

    # -- sealing and truncation -------------------------------------------------------------

    async def seal(self) -> list[Path]:
        """Close the current segment if it holds events and start the next (creating it,
        and fsyncing, truncating and closing the old one, in a thread, off the event loop);
        returns every sealed segment not yet deleted: the events buffered now are all in
        those segments."""
        if self._segment is not None and self._segment.pos:
            following: _Segment | None
            try:
                following = await asyncio.to_thread(_Segment, self._next_path(), self.segment_bytes)
            except OSError:  # the next append tries again (and reports it to the recorder)
                log.exception("starting a usage WAL segment failed")
                following = None
            if self._segment is not None:  # (appends meanwhile may have rolled it over)
                self._retire(self._segment)
            self._segment = following
        async with self._io:
            while self._retired:
                retired, self._retired = self._retired, []
                await asyncio.to_thread(_finish_all, retired)
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
        """fsync what was appended since the last sync, and finish the segments that filled
        up meanwhile; in a thread."""
        segment = self._segment
        if (segment is None or segment.pos == segment.synced) and not self._retired:
            return
        async with self._io:
            segment = self._segment
            if segment is not None and segment.pos != segment.synced:
                segment.synced = segment.pos
            else:
                segment = None
            retired, self._retired = self._retired, []
            if segment is None and not retired:
                return
            try:
                await asyncio.to_thread(_sync_and_finish, segment, retired)
            except OSError:
                log.exception("syncing the usage WAL failed")
                return
            self.syncs += 1

    # -- internals --------------------------------------------------------------------------

    def _next_path(self) -> Path:
        self._seq += 1
        return self.directory / f"{self.owner}.{self._seq:010d}.jsonl"

    def _new_segment(self, least: int) -> _Segment:
        return _Segment(self._next_path(), max(self.segment_bytes, _whole_pages(least)))

    def _retire(self, segment: _Segment) -> None:
        self._retired.append(segment)
        self._sealed.append(segment.path)

    def _roll(self, least: int) -> _Segment:
        """The current segment is full: start the next (at least ``least`` bytes long)."""
        segment = self._new_segment(least)  # first: when this fails, nothing changed
        if self._segment is not None:
            self._retire(self._segment)
        self._segment = segment
        return segment

    def _reopen(self) -> _Segment:
        if self._lock is None:
            raise RuntimeError("the usage WAL is not open")
        self._segment = self._new_segment(0)
        return self._segment

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


def _whole_pages(size: int) -> int:
    return max(1, -(-size // mmap.PAGESIZE)) * mmap.PAGESIZE


def _preallocate(fd: int, size: int) -> None:
    """Reserve the disk blocks of the file (which also sets its size), so that writing to the
    map never needs a block the disk does not have (the kernel would answer with SIGBUS)."""
    if sys.platform == "linux":
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
        else:
            return
    os.ftruncate(fd, size)  # no reservation (elsewhere, or a file system without it): sparse


def _finish_all(segments: list[_Segment]) -> None:
    for segment in segments:
        try:
            segment.finish()
        except OSError:
            log.exception("finishing usage WAL segment %s failed", segment.path.name)


def _sync_and_finish(segment: _Segment | None, retired: list[_Segment]) -> None:
    _finish_all(retired)
    if segment is not None:
        segment.sync()


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
    """The events of a segment: one JSON line each, zero bytes (the unwritten tail of a
    segment that was not sealed, or pages a power loss did not write) and lines that do not
    parse (torn by a kill in the middle of a write) skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # another process adopted and committed it first
        return
    for raw in data.rstrip(b"\0").split(b"\n"):
        line = raw.strip(b"\0 \t\r")
        if not line:
            continue
        try:
            yield event_from_line(line)
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("skipping an unreadable line in %s", path.name)

"""A local file of usage events that could not reach the database at shutdown."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path

import orjson

from switchboard.metering.usage import UsageEvent

_FIELDS = {f.name for f in dataclasses.fields(UsageEvent)}


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, events: list[UsageEvent]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:
            for event in events:
                fh.write(orjson.dumps(event.as_row()) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def take(self) -> list[UsageEvent]:
        """Read and remove the spool; the caller now owns the events."""
        if not self.path.exists():
            return []
        claimed = self.path.with_suffix(".replaying")
        self.path.replace(claimed)
        events = [
            event_from_line(line) for line in claimed.read_bytes().splitlines() if line.strip()
        ]
        claimed.unlink()
        return events


def event_from_line(line: bytes) -> UsageEvent:
    """One event from a JSON line written with ``orjson.dumps(event.as_row())``."""
    data = {k: v for k, v in orjson.loads(line).items() if k in _FIELDS}
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return UsageEvent(**data)

"""Records as plain JSON-ready dicts, the same for the admin API and the CLI's --json."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any


def plain(record: Any) -> dict[str, Any]:
    out = dataclasses.asdict(record)
    for name, value in out.items():
        if isinstance(value, datetime):
            out[name] = value.isoformat()
    return out

"""Usage rows as a table, JSON or CSV: one format for the CLI and the admin API alike."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from typing import Any

import orjson

from switchboard.errors import InvalidRequest

COLUMNS = (
    "request_id",
    "created_at",
    "model",
    "provider",
    "tokens_input",
    "tokens_output",
    "cost_usd",
    "billed_amount",
    "currency",
    "latency_ms",
    "status",
    "attempts",
    "endpoint",
    "stream",
    "tokens_estimated",
    "key_id",
    "user_id",
    "error",
    "route",
    "refusal_reason",
    "cached",
    "tokens_cached_input",
    "tokens_cache_write",
    "price_version",
    "plan_version",
)
FORMATS = ("table", "json", "csv")


def parse_since(value: str | None, param: str = "since") -> datetime | None:
    """A date (2026-11-01, midnight UTC) or an ISO 8601 time (UTC unless it has an offset)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise InvalidRequest(f"not a date or time: {value!r}", param=param) from exc
        parsed = datetime(day.year, day.month, day.day)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _cell(row: dict[str, Any], column: str, *, text: bool = True) -> Any:
    value = row.get(column)
    if isinstance(value, datetime):
        return value.isoformat()
    if text and column in ("cost_usd", "billed_amount") and isinstance(value, float):
        return f"{value:.8f}"
    return value


def as_json(rows: list[dict[str, Any]]) -> bytes:
    return orjson.dumps([{c: _cell(r, c, text=False) for c in COLUMNS} for r in rows])


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if _cell(row, c) is None else _cell(row, c) for c in COLUMNS])
    return out.getvalue()


def as_table(rows: list[dict[str, Any]]) -> str:
    columns = COLUMNS[:11]
    cells = [[str(_cell(r, c) if _cell(r, c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)

"""Running and inspecting the Lago export, shared by the server, the CLI and the admin API.

`build_exporter` turns the settings into a `LagoExporter` (``None`` when no Lago URL is set)
and turns a half-configured Lago into a `ConfigError`. `export_queue` is what the inspection
commands and routes use: the queue (backlog, dead letters, re-drive) lives in the database and
fills from the ledger whether or not Lago is configured, so it is always available; without
Lago its exporter simply has no client that can send.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from switchboard.errors import ConfigError
from switchboard.metering.exporter import ExportBacklog, LagoExporter
from switchboard.metering.lago import Delivery, LagoClient
from switchboard.settings import Settings
from switchboard.store import Database

MISSING_KEY = (
    "SWITCHBOARD_LAGO_URL is set but SWITCHBOARD_LAGO_API_KEY is not: set the Lago API key, "
    "or unset SWITCHBOARD_LAGO_URL to turn the export off"
)


def build_exporter(db: Database, settings: Settings) -> LagoExporter | None:
    """The exporter the settings describe, or None when SWITCHBOARD_LAGO_URL is unset."""
    if not settings.lago_url:
        return None
    key = settings.lago_api_key
    if key is None or not key.get_secret_value().strip():
        raise ConfigError(MISSING_KEY, param="SWITCHBOARD_LAGO_API_KEY")
    try:
        return LagoExporter.from_settings(db, settings)
    except ValueError as exc:  # the exporter's own checks, as a start-up error
        raise ConfigError(f"Lago export settings are invalid: {exc}") from exc


class _NoLago(LagoClient):
    """The client of an exporter used only to inspect the queue: it never sends."""

    def __init__(self) -> None:
        super().__init__("http://lago.invalid", "")

    async def send(self, events: Sequence[Mapping[str, Any]]) -> list[Delivery]:
        raise RuntimeError("Lago is not configured (SWITCHBOARD_LAGO_URL): nothing is sent")


def export_queue(db: Database, settings: Settings) -> LagoExporter:
    """An exporter for the queue's backlog, dead letters and re-drive only; never sends."""
    return LagoExporter(db, _NoLago(), metric_code=settings.lago_metric_code)


def backlog_view(backlog: ExportBacklog) -> dict[str, Any]:
    """The backlog as JSON: what `switchboard export status --json` and the admin API print."""
    oldest = backlog.oldest_pending_at
    return {
        "pending": backlog.pending,
        "dead": backlog.dead,
        "oldest_pending_at": oldest.isoformat() if oldest is not None else None,
        "lag_seconds": round(backlog.lag_seconds(), 3),
    }


def dead_letter_view(letter: Mapping[str, Any]) -> dict[str, Any]:
    """One dead letter as JSON: request id, tenant, event time, attempts, Lago's message."""
    return {
        "request_id": letter["request_id"],
        "tenant_id": letter["tenant_id"],
        "event_at": letter["event_at"].isoformat() if letter["event_at"] else None,
        "attempts": letter["attempts"],
        "error": letter["error"],
    }

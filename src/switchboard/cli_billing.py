"""`switchboard export-worker` and `switchboard export status|dead|redrive`: the Lago export.

The worker is the exporter on its own, for deployments that set
``SWITCHBOARD_EXPORT_IN_SERVER=false``; any number of workers (and gateway processes) can run
at once, because each claims disjoint events. The inspection commands only read and re-queue
the export queue in the database, so they work whether or not Lago is configured.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer

from switchboard.errors import ConfigError, SwitchboardError
from switchboard.metering.export_ops import (
    backlog_view,
    build_exporter,
    dead_letter_view,
    export_queue,
)
from switchboard.metering.exporter import LagoExporter
from switchboard.platform import open_platform
from switchboard.settings import Settings
from switchboard.store import Database

log = logging.getLogger("switchboard.export")

export_app = typer.Typer(
    help="Inspect the Lago usage export: backlog, dead letters, re-drive.", no_args_is_help=True
)

T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# How long the worker waits, once told to stop, for a send in flight before cancelling it.
STOP_TIMEOUT = 10.0


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _with_queue(fn: Callable[[LagoExporter], Awaitable[T]]) -> T:
    """Run ``fn`` on the export queue of the migrated database the environment names."""
    settings = Settings()

    async def run() -> T:
        async with open_platform(settings) as platform:
            queue = export_queue(platform.db, settings)
            try:
                return await fn(queue)
            finally:
                await queue.aclose()

    try:
        return asyncio.run(run())
    except SwitchboardError as exc:
        _fail(exc.message)
        raise  # unreachable: _fail exits


@export_app.command("status")
def export_status(as_json: JsonFlag = False) -> None:
    """Events not yet in Lago: pending, dead, the oldest pending one, and the lag."""
    view = backlog_view(_with_queue(lambda q: q.backlog()))
    if as_json:
        _print_json(view)
        return
    typer.echo(f"pending         {view['pending']}")
    typer.echo(f"dead            {view['dead']}")
    typer.echo(f"oldest pending  {view['oldest_pending_at'] or '-'}")
    typer.echo(f"lag             {view['lag_seconds']:.1f} s")


@export_app.command("dead")
def export_dead(
    as_json: JsonFlag = False,
    limit: Annotated[int, typer.Option(min=1, help="Most dead letters, oldest first.")] = 100,
) -> None:
    """Dead-lettered events (Lago refused them for good), with Lago's message."""
    letters = [dead_letter_view(d) for d in _with_queue(lambda q: q.dead_letters(limit=limit))]
    if as_json:
        _print_json(letters)
        return
    if not letters:
        typer.echo("no dead letters", err=True)
    for d in letters:
        typer.echo(f"{d['request_id']:<34} {d['tenant_id']:<22} {d['event_at']}  {d['error']}")


@export_app.command("redrive")
def export_redrive(
    request_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Request ids of dead letters to re-queue (default: all of them)."),
    ] = None,
) -> None:
    """Put dead letters back in the queue, due now (after fixing what Lago refused)."""
    named = request_ids or None
    count = _with_queue(lambda q: q.redrive(named))
    typer.echo(f"re-queued {count} dead usage event{'' if count == 1 else 's'}", err=True)
    if named is not None and count < len(named):
        typer.echo(f"{len(named) - count} of the named events were not dead letters", err=True)


def export_worker(
    log_every: Annotated[
        float, typer.Option(min=0.05, help="Seconds between backlog log lines.")
    ] = 60.0,
) -> None:
    """Export usage events to Lago until SIGINT or SIGTERM.

    Run it with SWITCHBOARD_EXPORT_IN_SERVER=false on the gateways, or alongside them: replicas
    never send an event twice."""
    settings = Settings()
    if not settings.lago_url:
        _fail(
            "SWITCHBOARD_LAGO_URL is not set: the export worker needs SWITCHBOARD_LAGO_URL and "
            "SWITCHBOARD_LAGO_API_KEY",
            code=2,
        )
    try:
        asyncio.run(_work(settings, log_every))
    except ConfigError as exc:
        _fail(exc.message, code=2)
    except SwitchboardError as exc:
        _fail(exc.message)


async def _work(settings: Settings, log_every: float) -> None:
    db = Database(settings.resolved_database_url())
    try:
        exporter = build_exporter(db, settings)
        assert exporter is not None  # the URL is set
        try:
            await db.migrate()
            await _serve_until_signalled(exporter, db, settings, log_every)
        finally:
            await exporter.aclose()
    finally:
        await db.dispose()


async def _serve_until_signalled(
    exporter: LagoExporter, db: Database, settings: Settings, log_every: float
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "exporting usage events to Lago at %s (metric %s) every %.1f s; database %s",
        settings.lago_url,
        settings.lago_metric_code,
        settings.export_interval_seconds,
        db.redacted_url(),
    )
    work = asyncio.create_task(exporter.run_forever(stop), name="lago-export")
    reporter = asyncio.create_task(_report(exporter, stop, log_every), name="export-report")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    log.info("stopping the export worker")
    try:
        await asyncio.wait_for(work, STOP_TIMEOUT)
    except TimeoutError:
        log.warning("a Lago send did not finish within %.0f s; cancelled", STOP_TIMEOUT)
    await reporter
    await _log_backlog(exporter)


async def _report(exporter: LagoExporter, stop: asyncio.Event, every: float) -> None:
    while not stop.is_set():
        await _log_backlog(exporter)
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            continue


async def _log_backlog(exporter: LagoExporter) -> None:
    try:
        backlog = await exporter.backlog()
    except Exception:
        log.exception("reading the export backlog failed")
        return
    log.info(
        "export backlog: %d pending, %d dead, lag %.1f s",
        backlog.pending,
        backlog.dead,
        backlog.lag_seconds(),
    )

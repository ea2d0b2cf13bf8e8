"""Billing commands: `switchboard plan show|set`, `switchboard prices`, and the Lago export
(`switchboard export-worker`, `switchboard export status|dead|redrive`).

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
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from switchboard.cli_support import JsonFlag, with_platform
from switchboard.cli_support import fail as _fail
from switchboard.cli_support import print_json as _print_json
from switchboard.config import GatewayConfig, Price, load_config
from switchboard.errors import ConfigError, SwitchboardError
from switchboard.metering.billing import PlanTerms, PlanVersion
from switchboard.metering.export_ops import (
    backlog_view,
    build_exporter,
    dead_letter_view,
    export_queue,
)
from switchboard.metering.exporter import LagoExporter
from switchboard.metering.invoice import invoice_for, render_html
from switchboard.metering.lago_sync import LagoApi, SyncReport
from switchboard.metering.lago_sync import sync as sync_lago
from switchboard.metering.quotes import effective_prices
from switchboard.platform import Platform
from switchboard.settings import Settings
from switchboard.store import Database

log = logging.getLogger("switchboard.export")

export_app = typer.Typer(
    help="Inspect the Lago usage export: backlog, dead letters, re-drive.", no_args_is_help=True
)
lago_app = typer.Typer(help="Set Lago up for the usage export.", no_args_is_help=True)
plan_app = typer.Typer(
    help="Show and set tenant plans (markup, model prices, currency, allowance).",
    no_args_is_help=True,
)

T = TypeVar("T")
# How long the worker waits, once told to stop, for a send in flight before cancelling it.
STOP_TIMEOUT = 10.0


def _with_queue(fn: Callable[[LagoExporter], Awaitable[T]]) -> T:
    """Run ``fn`` on the export queue of the migrated database the environment names."""
    settings = Settings()

    async def on(platform: Platform) -> T:
        queue = export_queue(platform.db, settings)
        try:
            return await fn(queue)
        finally:
            await queue.aclose()

    return with_platform(on)


TenantOption = Annotated[str, typer.Option("--tenant", help="Tenant slug or id.")]


def _print_plan(plan: PlanVersion) -> None:
    view = plan.view()
    for name in ("tenant_id", "version", "effective_from", "currency", "exchange_rate"):
        typer.echo(f"{name:<18} {view.get(name) if view.get(name) is not None else '-'}")
    typer.echo(f"{'markup_percent':<18} {view['markup_percent']:g}")
    typer.echo(f"{'included_allowance':<18} {view['included_allowance']:g} {view['currency']}")
    for model, price in sorted(view["model_prices"].items()):
        rates = ", ".join(f"{k} {v:g}" for k, v in price.items() if v is not None)
        typer.echo(f"{'model_price':<18} {model}: {rates}")


@plan_app.command("show")
def plan_show(tenant: TenantOption, as_json: JsonFlag = False) -> None:
    """The tenant's plan in force now (the default plan, cost in USD, if none was set)."""

    async def show(p: Platform) -> tuple[PlanVersion, list[PlanVersion]]:
        owner = await p.tenants.get(tenant)
        return await p.plans.at(owner.id), await p.plans.history(owner.id)

    plan, history = with_platform(show)
    if as_json:
        _print_json({**plan.view(), "history": [v.view() for v in history]})
    else:
        _print_plan(plan)


def _model_price(text: str) -> tuple[str, Price]:
    """``MODEL=INPUT/OUTPUT`` (per 1M tokens, in the plan's currency)."""
    model, _, rates = text.rpartition("=")
    parts = rates.split("/")
    usage = f"--model-price takes MODEL=INPUT/OUTPUT per 1M tokens, e.g. gpt-4o=3/12: {text!r}"
    if not model or len(parts) != 2:
        _fail(usage)
    try:
        return model, Price(input_per_1m=float(parts[0]), output_per_1m=float(parts[1]))
    except ValueError:
        _fail(usage)
        raise  # unreachable


@plan_app.command("set")
def plan_set(
    *,
    tenant: TenantOption,
    markup: Annotated[float | None, typer.Option(help="Markup percent over cost.")] = None,
    currency: Annotated[str | None, typer.Option(help="ISO 4217 code, e.g. EUR.")] = None,
    exchange_rate: Annotated[
        float | None, typer.Option(help="Units of the currency per USD.")
    ] = None,
    allowance: Annotated[
        float | None, typer.Option(help="Billed amount included each month.")
    ] = None,
    cache_hit_price: Annotated[
        float | None,
        typer.Option("--cache-hit-price", help="Price of a cache hit per 1M of its tokens."),
    ] = None,
    model_price: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=INPUT/OUTPUT fixed price per 1M tokens (repeatable)."),
    ] = None,
    clear_model_prices: Annotated[
        bool, typer.Option(help="Drop the fixed model prices of the current plan.")
    ] = False,
    effective_from: Annotated[
        str | None, typer.Option("--from", help="ISO 8601 time with offset (default: now).")
    ] = None,
) -> None:
    """Add a plan version: the current terms with the options given changed."""
    start = None
    if effective_from is not None:
        try:
            start = datetime.fromisoformat(effective_from)
        except ValueError:
            _fail(f"--from must be an ISO 8601 time: {effective_from!r}")

    async def put(p: Platform) -> PlanVersion:
        owner = await p.tenants.get(tenant)
        current = (await p.plans.at(owner.id)).terms.model_dump()
        if clear_model_prices:
            current["model_prices"] = {}
        for text in model_price or []:
            name, price = _model_price(text)
            current["model_prices"][name] = price.model_dump()
        changes = {
            "markup_percent": markup,
            "currency": currency,
            "exchange_rate": exchange_rate,
            "included_allowance": allowance,
            "cache_hit_per_1m": cache_hit_price,
        }
        current.update({k: v for k, v in changes.items() if v is not None})
        if currency == "USD" and exchange_rate is None:
            current["exchange_rate"] = 1.0
        try:
            terms = PlanTerms.model_validate(current)
        except ValidationError as exc:
            _fail(f"invalid plan: {exc.errors()[0]['msg']}")
            raise  # unreachable
        return await p.plans.put(owner.id, terms, effective_from=start)

    version = with_platform(put)
    typer.echo(
        f"plan version {version.id} in force from {version.view()['effective_from']}", err=True
    )
    _print_plan(version)


def prices(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Also show what this tenant is billed.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="One model name (or upstream model id).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML gateway config.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Effective prices per 1M tokens: the provider price version in force now, and billed."""
    settings = Settings(config=config.resolve()) if config is not None else Settings()
    try:
        gateway_config = load_config(settings.resolved_config_path())
    except ConfigError as exc:
        _fail(exc.message, code=2)
        raise  # unreachable

    async def plan_of(p: Platform) -> PlanVersion | None:
        if tenant is None:
            return None
        return await p.plans.at((await p.tenants.get(tenant)).id)

    plan = with_platform(plan_of)
    rows = effective_prices(gateway_config, model=model, plan=plan)
    if as_json:
        _print_json(rows)
        return
    _print_prices(rows, gateway_config)


def _print_prices(rows: list[dict[str, Any]], _config: GatewayConfig) -> None:
    header = f"{'model':<24} {'provider':<16} {'version':<40} {'in/1M':>9} {'out/1M':>9}"
    billed = any("billed" in r for r in rows)
    typer.echo(header + (f"  {'billed in/1M':>13} {'out/1M':>9} cur" if billed else ""))
    for r in rows:
        if not r["priced"]:
            typer.echo(f"{r['model']:<24} {r['provider'] or '-':<16} NO PRICE (costs 0)")
            continue
        line = (
            f"{r['model']:<24} {r['provider'] or '-':<16} {r['version']:<40} "
            f"{r['input_per_1m']:>9g} {r['output_per_1m']:>9g}"
        )
        b = r.get("billed")
        if b is not None and "input_per_1m" in b:
            line += f"  {b['input_per_1m']:>13g} {b['output_per_1m']:>9g} {b['currency']}"
        typer.echo(line)


def invoice(
    tenant: TenantOption,
    month: Annotated[str, typer.Option("--month", help="YYYY-MM (UTC).")],
    fmt: Annotated[str, typer.Option("--format", help="json | html")] = "json",
) -> None:
    """The invoice preview of one tenant and month: line items per model, allowance, total."""
    if fmt not in ("json", "html"):
        _fail("--format must be json or html", code=2)
    found = with_platform(lambda p: invoice_for(p, tenant, month))
    if fmt == "html":
        typer.echo(render_html(found))
    else:
        _print_json(found)


@lago_app.command("sync")
def lago_sync(as_json: JsonFlag = False) -> None:
    """Create or update, in Lago, the billable metric and each tenant's customer, plan and
    subscription (sb_<tenant id>). Safe to run again: only what differs is written."""
    settings = Settings()
    key = settings.lago_api_key.get_secret_value() if settings.lago_api_key else ""
    if not settings.lago_url or not key.strip():
        _fail("lago sync needs SWITCHBOARD_LAGO_URL and SWITCHBOARD_LAGO_API_KEY", code=2)
    url = str(settings.lago_url)

    async def run(p: Platform) -> SyncReport:
        tenants = [(t, await p.plans.at(t.id)) for t in await p.tenants.list()]
        api = LagoApi(url, key)
        try:
            return await sync_lago(api, settings.lago_metric_code, tenants)
        finally:
            await api.aclose()

    report = with_platform(run)
    if as_json:
        _print_json(report.view())
        return
    for name in report.created:
        typer.echo(f"created    {name}")
    for name in report.updated:
        typer.echo(f"updated    {name}")
    typer.echo(f"unchanged  {report.unchanged}", err=True)


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

"""`switchboard usage`: the ledger of one tenant (no subcommand), grouped reports (`usage
report`, also `switchboard analytics`) and the reconciliation (`usage reconcile`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from switchboard.cli_support import fail as _fail
from switchboard.cli_support import with_platform
from switchboard.config import load_config
from switchboard.errors import ConfigError, InvalidRequest
from switchboard.metering import analytics, report
from switchboard.metering.analytics import UsageQuery, UsageScope
from switchboard.metering.reconcile import reconcile
from switchboard.platform import Platform
from switchboard.settings import Settings
from switchboard.store.analytics import AnalyticsRepository

usage_app = typer.Typer(
    help="The usage ledger: one tenant's requests, grouped reports, reconciliation.",
    invoke_without_command=True,
)

TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant slug or id.")]
FormatOpt = Annotated[str, typer.Option("--format", help="table | json | csv")]


@usage_app.callback()
def usage(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    since: Annotated[str | None, typer.Option(help="Only requests from this date/time on.")] = None,
    fmt: FormatOpt = "table",
    limit: Annotated[int, typer.Option(help="Most rows, newest first.")] = 10_000,
) -> None:
    """One row per request: id, time, model, provider, tokens, cost, billed, latency, status."""
    if ctx.invoked_subcommand is not None:
        return
    if tenant is None:
        _fail("--tenant is required (or use a subcommand: report, reconcile)", code=2)
        return
    if fmt not in report.FORMATS:
        _fail(f"--format must be one of {', '.join(report.FORMATS)}")
    owner_name = tenant

    async def rows(p: Platform) -> list[dict[str, Any]]:
        owner = await p.tenants.get(owner_name)
        return await p.usage.query(owner.id, since=report.parse_since(since), limit=limit)

    data = with_platform(rows)
    if fmt == "json":
        sys.stdout.write(report.as_json(data).decode() + "\n")
    elif fmt == "csv":
        sys.stdout.write(report.as_csv(data))
    else:
        typer.echo(report.as_table(data))


@usage_app.command("report")
def usage_report(
    *,
    group_by: Annotated[
        str,
        typer.Option(help=f"Comma-separated: {', '.join(analytics.DIMENSIONS)}; '' for totals."),
    ] = "tenant",
    since: Annotated[str | None, typer.Option(help="From this date/time (UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this date/time (UTC).")] = None,
    tenant: TenantOpt = None,
    model: Annotated[str | None, typer.Option(help="One model name.")] = None,
    fmt: FormatOpt = "table",
) -> None:
    """Requests, errors, tokens, cost, billed amount and latency p50/p95 per group."""
    if fmt not in report.FORMATS:
        _fail(f"--format must be one of {', '.join(report.FORMATS)}")
    try:
        dims = analytics.parse_group_by(group_by)
        start = report.parse_since(since)
        end = report.parse_since(until, "until")
    except InvalidRequest as exc:
        _fail(exc.message, code=2)
        return

    async def run(p: Platform) -> tuple[UsageQuery, list[dict[str, Any]]]:
        tenant_id = (await p.tenants.get(tenant)).id if tenant else None
        query = UsageQuery(dims, start, end, tenant_id, model)
        # The local CLI runs as the platform operator: everything is in scope.
        return query, await AnalyticsRepository(p.db).summary(query, UsageScope())

    query, rows = with_platform(run)
    if fmt == "json":
        sys.stdout.write(analytics.as_json(query, rows).decode() + "\n")
    elif fmt == "csv":
        sys.stdout.write(analytics.as_csv(query, rows))
    else:
        typer.echo(analytics.as_table(query, rows))


@usage_app.command("reconcile")
def usage_reconcile(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant slug or id.")],
    month: Annotated[str, typer.Option("--month", help="YYYY-MM (UTC).")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The gateway config the gateway runs.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recompute every event's cost and billed amount of the month from the price book and
    plan in force at its time; report differences (exit status 1 when there are any)."""
    settings = Settings(config=config.resolve()) if config is not None else Settings()
    try:
        gateway_config = load_config(settings.resolved_config_path())
    except ConfigError as exc:
        _fail(exc.message, code=2)
        return
    result = with_platform(lambda p: reconcile(p, gateway_config, tenant, month))
    if as_json:
        typer.echo(orjson.dumps(result.view(), option=orjson.OPT_INDENT_2).decode())
    else:
        view = result.view()
        for name in (
            "events",
            "recorded_cost_usd",
            "recomputed_cost_usd",
            "recorded_billed",
            "recomputed_billed",
            "differences",
        ):
            typer.echo(f"{name:<20} {view[name]}")
        for example in result.examples:
            typer.echo(orjson.dumps(example).decode())
    if result.differences:
        raise typer.Exit(1)

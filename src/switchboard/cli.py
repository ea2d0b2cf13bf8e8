"""The `switchboard` command: a thin layer over the same services the admin API uses."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from switchboard.cli_billing import export_app, export_worker, invoice, lago_app, plan_app, prices
from switchboard.cli_identity import audit_command, department_app, user_app
from switchboard.cli_limits import policy_app
from switchboard.cli_support import JsonFlag, audit
from switchboard.cli_support import fail as _fail
from switchboard.cli_support import print_json as _print_json
from switchboard.cli_support import settings as _settings
from switchboard.cli_support import with_platform as _with_platform
from switchboard.cli_usage import usage_app, usage_report
from switchboard.config import GatewayConfig, load_config
from switchboard.errors import ConfigError, NotFound
from switchboard.platform import Platform
from switchboard.settings import Settings
from switchboard.store import ApiKey, Tenant
from switchboard.views import plain

app = typer.Typer(help="Switchboard: a multi-tenant AI gateway.", no_args_is_help=True)
tenant_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
key_app = typer.Typer(help="Create, list and revoke tenant API keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
key_app.add_typer(policy_app, name="policy")
app.add_typer(export_app, name="export")
app.command("export-worker")(export_worker)
app.add_typer(plan_app, name="plan")
app.add_typer(lago_app, name="lago")
app.add_typer(usage_app, name="usage")
app.command("analytics")(usage_report)
app.command("invoice")(invoice)
app.command("prices")(prices)
app.add_typer(department_app, name="department")
app.add_typer(user_app, name="user")
app.command("audit")(audit_command)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML gateway config (providers, models).")
]


def _load(settings: Settings) -> GatewayConfig:
    try:
        return load_config(settings.resolved_config_path())
    except ConfigError as exc:
        _fail(exc.message, code=2)
        raise


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
) -> None:
    """Run the gateway (SQLite and in-process defaults unless configured otherwise)."""
    import uvicorn

    from switchboard.api.http_protocol import CorkedHttpToolsProtocol
    from switchboard.auth.admin import ensure_admin_key
    from switchboard.doctor import shared_state
    from switchboard.runtime import print_admin_key
    from switchboard.store import Database

    settings = _settings(config)
    gateway_config = _load(settings)  # a broken file stops here, before anything listens
    if config is not None:  # worker processes build their settings from the environment
        os.environ["SWITCHBOARD_CONFIG"] = str(config.resolve())
    if workers is not None:
        os.environ["SWITCHBOARD_WORKERS"] = str(workers)
        settings = settings.model_copy(update={"workers": workers})
    sharing = shared_state(settings)
    if sharing.level != "ok":
        typer.echo(f"switchboard: warning: {sharing.detail}; {sharing.fix}", err=True)

    async def prepare() -> str | None:
        db = Database(settings.resolved_database_url())
        try:
            await db.migrate()
            return None if settings.admin_key else await ensure_admin_key(db)
        finally:
            await db.dispose()

    created = asyncio.run(prepare())
    if created:
        print_admin_key(created)
    typer.echo(
        f"switchboard: {len(gateway_config.providers)} providers from {gateway_config.source}; "
        f"listening on http://{host or settings.host}:{port or settings.port}",
        err=True,
    )
    uvicorn.run(
        "switchboard.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=CorkedHttpToolsProtocol,
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        proxy_headers=False,  # X-Forwarded-* headers are not trusted by default
        server_header=False,
    )


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (serve does this on start too)."""
    _with_platform(lambda p: asyncio.sleep(0))
    typer.echo("database schema is current", err=True)


@app.command()
def doctor(
    config: ConfigOption = None,
    server: Annotated[
        str | None,
        typer.Option(help="A running gateway to ask for live breaker state (default: host:port)."),
    ] = None,
) -> None:
    """Check the config, the database, every provider and the running gateway's breakers."""
    from switchboard.doctor import diagnose, live_findings, shared_state
    from switchboard.store import Database

    settings = _settings(config)
    try:
        gateway_config: GatewayConfig | None = load_config(settings.resolved_config_path())
        error = None
    except ConfigError as exc:
        gateway_config, error = None, exc.message

    async def run() -> bool:
        db = Database(settings.resolved_database_url())
        try:
            findings = [*await diagnose(gateway_config, error, db), shared_state(settings)]
        finally:
            await db.dispose()
        url = server or f"http://{settings.host}:{settings.port}"
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        findings += await live_findings(url, admin_key)
        for f in findings:
            mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[f.level]
            typer.echo(f"[{mark}] {f.check}: {f.detail}")
            if f.fix and f.level != "ok":
                typer.echo(f"       fix: {f.fix}")
        return all(f.level != "fail" for f in findings)

    if not asyncio.run(run()):
        raise typer.Exit(1)


@tenant_app.command("create")
def tenant_create(
    slug: str,
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    usage_mode: Annotated[
        str, typer.Option(help="local | external | hybrid: which providers it may reach.")
    ] = "hybrid",
) -> None:
    """Create a tenant."""

    async def create(p: Platform) -> Tenant:
        tenant = await p.tenants.create(slug, name=name, usage_mode=usage_mode)
        await audit(p, "tenant.create", tenant_id=tenant.id, target=tenant.id, slug=slug)
        return tenant

    tenant = _with_platform(create)
    typer.echo(
        f"created tenant {tenant.slug} ({tenant.id}), usage mode {tenant.usage_mode}", err=True
    )


@tenant_app.command("update")
def tenant_update(
    slug: str,
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    usage_mode: Annotated[str | None, typer.Option(help="local | external | hybrid.")] = None,
) -> None:
    """Change a tenant's name or usage mode (running gateways see it within the key cache TTL)."""

    async def change(p: Platform) -> Tenant:
        tenant = await p.tenants.update(slug, name=name, usage_mode=usage_mode)
        fields = sorted(k for k, v in (("name", name), ("usage_mode", usage_mode)) if v)
        await audit(p, "tenant.update", tenant_id=tenant.id, target=tenant.id, fields=fields)
        return tenant

    tenant = _with_platform(change)
    typer.echo(f"updated tenant {tenant.slug}: usage mode {tenant.usage_mode}", err=True)


@tenant_app.command("list")
def tenant_list(as_json: JsonFlag = False) -> None:
    """List tenants."""
    tenants = _with_platform(lambda p: p.tenants.list())
    if as_json:
        _print_json([plain(t) for t in tenants])
        return
    for t in tenants:
        typer.echo(f"{t.slug:<24} {t.id:<22} {t.usage_mode:<9} {t.name}")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant slug.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in: Annotated[
        float | None, typer.Option("--expires-in", help="Days until the key expires.")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", help="E-mail of the user the key belongs to (default: a tenant service key)."
        ),
    ] = None,
) -> None:
    """Create an API key; the key alone goes to stdout, shown this once."""
    if expires_in is not None and expires_in <= 0:
        _fail("--expires-in must be a positive number of days")

    async def create(p: Platform) -> tuple[str, str]:
        owner = await p.tenants.get(tenant)
        person = await p.users.find_by_email(owner.id, user) if user else None
        if user and person is None:
            raise NotFound(f"no user {user!r} in tenant {tenant!r}", param="user")
        key, secret = await p.keys.create(
            owner,
            name=name,
            expires_in_days=expires_in,
            user_id=person.id if person else None,
        )
        await audit(
            p, "key.create", tenant_id=owner.id, target=key.id, name=key.name, user_id=key.user_id
        )
        return key.id, secret

    key_id, secret = _with_platform(create)
    typer.echo(f"created key {key_id} for tenant {tenant} (the key is shown once)", err=True)
    sys.stdout.write(secret + "\n")


@key_app.command("list")
def key_list(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant slug.")], as_json: JsonFlag = False
) -> None:
    """List a tenant's keys (never their secrets)."""

    async def listing(p: Platform) -> list[Any]:
        return await p.keys.list((await p.tenants.get(tenant)).id)

    keys = _with_platform(listing)
    if as_json:
        _print_json([plain(k) for k in keys])
        return
    for k in keys:
        state = "revoked" if k.revoked_at else "active"
        expires = k.expires_at.isoformat() if k.expires_at else "never"
        typer.echo(f"{k.id:<22} {k.prefix}…  {state:<8} expires {expires:<32} {k.name}")


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke a key (running gateways refuse it within the key cache TTL)."""

    async def revoke(p: Platform) -> ApiKey:
        key = await p.keys.revoke(key_id)
        await audit(p, "key.revoke", tenant_id=key.tenant_id, target=key.id)
        return key

    key = _with_platform(revoke)
    typer.echo(f"revoked {key.id}", err=True)


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("SWITCHBOARD_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app()

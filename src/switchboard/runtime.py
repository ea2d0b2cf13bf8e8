"""Everything one gateway process holds while it serves, built at start-up and torn down at
shutdown (the app's lifespan): database, provider clients, model catalog, key cache, usage
recorder, and (when Lago is configured) the usage exporter. Nothing here lives in a module
global."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from datetime import timedelta

from switchboard.auth import AdminAuthenticator, KeyAuthenticator
from switchboard.auth.admin import ensure_admin_key
from switchboard.auth.audit import Auditor
from switchboard.auth.external_login import ExternalLogins
from switchboard.auth.redis_throttle import RedisLoginThrottle
from switchboard.auth.secretbox import load_secret_box
from switchboard.auth.sessions import SessionService
from switchboard.auth.throttle import LoginAllowance, LoginThrottle, MemoryLoginThrottle
from switchboard.auth.tokens import AccessTokens, session_secret
from switchboard.config import GatewayConfig
from switchboard.errors import ConfigError
from switchboard.gateway import Gateway, Router, build_catalog
from switchboard.gateway.budget_alerts import WebhookNotifier
from switchboard.gateway.cache import MemoryCache, RedisCache, ResponseCache
from switchboard.gateway.limiting import RequestLimits
from switchboard.gateway.scopes import Subject
from switchboard.limits import MemoryLimiter, RedisLimiter
from switchboard.limits.budgets import BudgetStore, MemoryBudgets, RedisBudgets
from switchboard.metering import PriceTable, UsageRecorder
from switchboard.metering.billing import BillingSink
from switchboard.metering.export_ops import build_exporter, export_queue
from switchboard.metering.exporter import LagoExporter
from switchboard.metering.spool import Spool
from switchboard.metering.wal import UsageWal
from switchboard.platform import Platform
from switchboard.providers import Provider, build_provider
from switchboard.settings import Settings
from switchboard.store import Database
from switchboard.store.spend import monthly_spend

log = logging.getLogger("switchboard")

# How long shutdown waits for an in-flight Lago send before cancelling it (its claimed events
# are sent again once their lease runs out; nothing is lost).
EXPORT_STOP_TIMEOUT = 5.0


def print_admin_key(secret: str) -> None:
    sys.stderr.write(
        "\nGenerated the platform admin key. It is shown this once; store it now:\n\n"
        f"    {secret}\n\nUse it as 'Authorization: Bearer <key>' on /admin/v1, or set "
        "SWITCHBOARD_ADMIN_KEY to choose your own.\n\n"
    )
    sys.stderr.flush()


@dataclass
class Runtime:
    settings: Settings
    config: GatewayConfig
    platform: Platform
    providers: dict[str, Provider]
    gateway: Gateway
    keys: KeyAuthenticator
    admin: AdminAuthenticator
    recorder: UsageRecorder
    auditor: Auditor
    sessions: SessionService  # human sign-in; LDAP/OIDC flows call sessions.sign_in_external
    logins: ExternalLogins  # tenants' identity providers (LDAP/AD, OIDC) and their flows
    throttle: LoginThrottle  # failed sign-ins (password, password change, LDAP), shared
    # The Lago export queue (backlog, dead letters, re-drive): there whether or not Lago is
    # configured. `export_task` is the in-process exporter, when this process runs one.
    export: LagoExporter
    export_task: asyncio.Task[None] | None = None
    export_stop: asyncio.Event = field(default_factory=asyncio.Event)
    notifier: WebhookNotifier | None = None

    @classmethod
    async def start(cls, settings: Settings, config: GatewayConfig) -> Runtime:
        box = load_secret_box(settings)  # a bad SWITCHBOARD_SECRET_KEY stops start-up here
        db = Database(settings.resolved_database_url())
        try:  # a half-configured Lago stops start-up before anything is touched
            exporter = build_exporter(db, settings)
        except ConfigError:
            await db.dispose()
            raise
        await db.migrate()
        configured_admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        if configured_admin is None:
            created = await ensure_admin_key(db)
            if created is not None:  # straight to the operator's terminal, never into logs
                print_admin_key(created)
        platform = Platform(db)
        auditor = Auditor(platform.audit)
        secret = await _signing_key(db, settings)
        # One Redis pool per process, when set: rate limits, budgets and the sign-in throttle.
        limiter = RedisLimiter(settings.limits_url) if settings.limits_url else None
        throttle = _login_throttle(settings, limiter, secret)
        sessions = _sessions(settings, platform, auditor, secret, throttle)
        notifier = WebhookNotifier(settings.budget_webhook_url)
        providers = {p.name: build_provider(p) for p in config.providers}
        catalog = await build_catalog(config, providers, PriceTable(config.prices))
        recorder = UsageRecorder(
            BillingSink(platform.usage, platform.plans),
            spool=Spool(settings.data_dir / "usage-spool.jsonl"),
            wal=UsageWal(
                settings.data_dir / "usage-wal",
                sync_interval=settings.usage_wal_sync_interval_seconds,
                segment_bytes=settings.usage_wal_segment_bytes,
            )
            if settings.usage_wal
            else None,
            flush_interval=settings.usage_flush_interval_seconds,
            batch_size=settings.usage_batch_size,
            buffer_limit=settings.usage_buffer_limit,
        )
        await recorder.start()
        log.info(
            "serving %d models from %d providers; database %s",
            len(catalog.names()),
            len(providers),
            db.redacted_url(),
        )
        rt = cls(
            settings=settings,
            config=config,
            platform=platform,
            providers=providers,
            gateway=Gateway(
                Router(catalog, config.router),
                recorder,
                _response_cache(settings),
                _request_limits(settings, platform, notifier, limiter),
            ),
            keys=KeyAuthenticator(
                platform.keys,
                ttl=settings.key_cache_ttl_seconds,
                configs=platform.configs,
                policies=platform.key_policies,
                users=platform.users,
            ),
            admin=AdminAuthenticator(db, configured_admin),
            recorder=recorder,
            auditor=auditor,
            sessions=sessions,
            logins=ExternalLogins(platform, box, sessions, auditor, throttle),
            throttle=throttle,
            export=exporter or export_queue(db, settings),
            notifier=notifier,
        )
        if exporter is not None and settings.export_in_server:
            rt.export_task = asyncio.create_task(
                exporter.run_forever(rt.export_stop), name="lago-export"
            )
            log.info(
                "exporting usage events to Lago at %s every %.1f s",
                settings.lago_url,
                settings.export_interval_seconds,
            )
        return rt

    async def stop(self) -> None:
        await self._stop_export()  # bounded, never raises: the recorder below still drains
        await self.keys.aclose()  # key lookups under way, before the database goes
        await self.gateway.cache.aclose()
        await self.gateway.limits.aclose()
        if self.notifier is not None:
            await self.notifier.aclose()
        await self.recorder.stop()
        await self.logins.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.platform.db.dispose()

    async def _stop_export(self) -> None:
        self.export_stop.set()
        try:
            if self.export_task is not None:
                await asyncio.wait_for(self.export_task, EXPORT_STOP_TIMEOUT)
        except TimeoutError:
            log.warning(
                "the Lago export did not stop within %.0f s and was cancelled; the events it "
                "was sending go out again when their lease ends",
                EXPORT_STOP_TIMEOUT,
            )
        try:
            await self.export.aclose()
        except Exception:
            log.exception("closing the Lago client failed")


async def _signing_key(db: Database, settings: Settings) -> bytes:
    configured = settings.session_secret.get_secret_value() if settings.session_secret else None
    if configured is not None and len(configured) < 32:
        await db.dispose()
        raise ConfigError("SWITCHBOARD_SESSION_SECRET must be at least 32 characters")
    return await session_secret(db, configured)


def _sessions(
    settings: Settings,
    platform: Platform,
    auditor: Auditor,
    secret: bytes,
    throttle: LoginThrottle,
) -> SessionService:
    return SessionService(
        platform,
        AccessTokens(secret, ttl_seconds=settings.access_token_ttl_seconds),
        auditor,
        throttle,
        idle_timeout=timedelta(seconds=settings.session_idle_timeout_seconds),
        max_age=timedelta(seconds=settings.session_max_age_seconds),
        check_ttl=settings.session_check_ttl_seconds,
    )


def _login_throttle(
    settings: Settings, limiter: RedisLimiter | None, secret: bytes
) -> LoginThrottle:
    """In Redis with the limits (every replica counts together), else in this process."""
    allowance = LoginAllowance(
        per_address=settings.login_max_failures,
        per_account=settings.login_max_account_failures,
        window_seconds=settings.login_lockout_seconds,
    )
    if limiter is None:
        return MemoryLoginThrottle(allowance)
    return RedisLoginThrottle(limiter, allowance, secret=secret)


def _response_cache(settings: Settings) -> ResponseCache:
    if settings.cache_url:
        return RedisCache(settings.cache_url)
    return MemoryCache(max_entries=settings.cache_max_entries, max_bytes=settings.cache_max_bytes)


def _request_limits(
    settings: Settings,
    platform: Platform,
    notifier: WebhookNotifier,
    shared: RedisLimiter | None,
) -> RequestLimits:
    """Rates and leases in Redis when ``limits_url`` is set (``shared``; budgets too), else
    in process."""
    limiter: MemoryLimiter | RedisLimiter
    budgets: BudgetStore
    if shared is not None:
        limiter, budgets = shared, RedisBudgets(shared)
    else:
        limiter, budgets = MemoryLimiter(), MemoryBudgets()

    async def spend(subject: Subject, month: str) -> float:
        return await monthly_spend(
            platform.db,
            subject.tenant_id,
            month,
            key_id=subject.key_id,
            user_id=subject.user_id,
        )

    return RequestLimits(
        limiter,
        budgets,
        spend=spend,
        notify=notifier,
        lease_seconds=settings.limits_lease_seconds,
        default_max_tokens=settings.budget_default_max_tokens,
    )

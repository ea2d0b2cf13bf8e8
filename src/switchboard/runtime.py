"""Everything one gateway process holds while it serves, built at start-up and torn down at
shutdown (the app's lifespan): database, provider clients, model catalog, key cache, usage
recorder. Nothing here lives in a module global."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from switchboard.auth import AdminAuthenticator, KeyAuthenticator
from switchboard.auth.admin import ensure_admin_key
from switchboard.config import GatewayConfig
from switchboard.gateway import Gateway, Router, build_catalog
from switchboard.metering import PriceTable, UsageRecorder
from switchboard.metering.spool import Spool
from switchboard.platform import Platform
from switchboard.providers import Provider, build_provider
from switchboard.settings import Settings
from switchboard.store import Database

log = logging.getLogger("switchboard")


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

    @classmethod
    async def start(cls, settings: Settings, config: GatewayConfig) -> Runtime:
        db = Database(settings.resolved_database_url())
        await db.migrate()
        configured_admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        if configured_admin is None:
            created = await ensure_admin_key(db)
            if created is not None:  # straight to the operator's terminal, never into logs
                print_admin_key(created)
        platform = Platform(db)
        providers = {p.name: build_provider(p) for p in config.providers}
        catalog = await build_catalog(config, providers, PriceTable(config.prices))
        recorder = UsageRecorder(
            platform.usage,
            spool=Spool(settings.data_dir / "usage-spool.jsonl"),
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
        return cls(
            settings=settings,
            config=config,
            platform=platform,
            providers=providers,
            gateway=Gateway(Router(catalog, config.router), recorder),
            keys=KeyAuthenticator(platform.keys, ttl=settings.key_cache_ttl_seconds),
            admin=AdminAuthenticator(db, configured_admin),
            recorder=recorder,
        )

    async def stop(self) -> None:
        await self.recorder.stop()
        for provider in self.providers.values():
            await provider.aclose()
        await self.platform.db.dispose()

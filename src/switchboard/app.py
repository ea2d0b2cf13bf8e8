"""Wiring only: routes from each surface, error handlers, and the lifespan that builds and
tears down the `Runtime`. Decisions live in the modules this file connects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from switchboard.api import admin, health, openai
from switchboard.api.errors import EXCEPTION_HANDLERS
from switchboard.config import GatewayConfig, load_config
from switchboard.runtime import Runtime
from switchboard.settings import Settings


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> Starlette:
    settings = settings or Settings()
    if config is None:
        config = load_config(settings.resolved_config_path())
    chosen = config

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, chosen)
        try:
            yield
        finally:
            await app.state.runtime.stop()

    return Starlette(
        routes=[*health.routes, *openai.routes, *admin.routes],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )

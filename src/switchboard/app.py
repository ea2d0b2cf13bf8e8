"""Wiring only: which surface serves which path, the error handlers, and the lifespan that
builds and tears down the `Runtime`. Decisions live in the modules this file connects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from switchboard.api import (
    admin,
    admin_analytics,
    admin_billing,
    admin_identity_providers,
    admin_limits,
    admin_people,
    admin_sessions,
    auth_external,
    auth_sessions,
    health,
    metrics,
)
from switchboard.api.admin_access import guard
from switchboard.api.anthropic import AnthropicSurface
from switchboard.api.errors import EXCEPTION_HANDLERS
from switchboard.api.ollama import OllamaSurface
from switchboard.api.openai import OpenAISurface
from switchboard.config import GatewayConfig, load_config
from switchboard.heap import freeze_startup_heap, thaw_heap
from switchboard.runtime import Runtime
from switchboard.settings import Settings


class SwitchboardApp:
    """The ASGI app: ``/v1/messages`` goes to the Anthropic surface and the rest of ``/v1/...``
    straight to the OpenAI surface (the hot paths, plain ASGI); the lifespan and everything
    else go to the Starlette app (admin, probes). ``/`` and ``/api/...`` are Ollama's API."""

    def __init__(
        self,
        framework: Starlette,
        openai_surface: OpenAISurface,
        anthropic_surface: AnthropicSurface | None = None,
        ollama_surface: OllamaSurface | None = None,
    ) -> None:
        self.framework = framework
        self._openai = openai_surface
        self._anthropic = anthropic_surface
        self._ollama = ollama_surface

    @property
    def state(self) -> State:
        return self.framework.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/messages" and self._anthropic:
            await self._anthropic(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self._openai(scope, receive, send)
        elif (
            scope["type"] == "http"
            and self._ollama
            and (scope["path"] == "/" or scope["path"].startswith("/api/"))
        ):
            await self._ollama(scope, receive, send)
        else:
            await self.framework(scope, receive, send)


def create_app(
    settings: Settings | None = None, config: GatewayConfig | None = None
) -> SwitchboardApp:
    settings = settings or Settings()
    if config is None:
        config = load_config(settings.resolved_config_path())
    chosen = config

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, chosen)
        freeze_startup_heap()
        try:
            yield
        finally:
            thaw_heap()
            await app.state.runtime.stop()

    framework = Starlette(
        routes=[
            *health.routes,
            *metrics.routes,
            *auth_sessions.routes,
            *auth_external.routes,
            *guard(
                [
                    *admin.routes,
                    *admin_people.routes,
                    *admin_sessions.routes,
                    *admin_billing.routes,
                    *admin_limits.routes,
                    *admin_identity_providers.routes,
                    *admin_analytics.routes,
                ]
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    return SwitchboardApp(
        framework,
        OpenAISurface(lambda: framework.state.runtime),
        AnthropicSurface(lambda: framework.state.runtime),
        OllamaSurface(lambda: framework.state.runtime),
    )

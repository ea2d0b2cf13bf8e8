"""One request's way through the gateway, after its surface has parsed and checked it:

    route (model → deployments, usage mode, fallbacks) → attempts (router) → provider adapter
      → upstream → back to the client → meter

Every request that passed authentication produces exactly one `UsageEvent`: `Gateway.metered`
opens it, and it is recorded when the request ends however it ends; a stream takes it over and
records it when the stream closes (finished, failed, or cut by the client). Retries and
fallbacks happen inside that one event: it records how many attempts were made and where.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from switchboard.auth.keys import Caller
from switchboard.errors import SwitchboardError, UpstreamTimeout
from switchboard.gateway.router import Attempts, Router
from switchboard.gateway.routing import Deployment, ModelCatalog
from switchboard.gateway.streams import MeteredStream, Prefetched, open_stream
from switchboard.gateway.tokens import estimate_input_tokens, estimate_prompt_tokens
from switchboard.metering.prices import cost_usd
from switchboard.metering.recorder import UsageRecorder
from switchboard.metering.usage import UsageEvent
from switchboard.providers.base import JSON
from switchboard.store.database import utcnow

T = TypeVar("T")
# Request ids: a random prefix per process and a counter, unique without a syscall per request.
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def route_headers(event: UsageEvent) -> list[tuple[bytes, bytes]]:
    """Which request, provider and deployment served, and after how many attempts."""
    return [
        (b"x-request-id", event.request_id.encode()),
        (b"x-switchboard-provider", (event.provider or "").encode()),
        (b"x-switchboard-deployment", (event.upstream_model or "").encode()),
        (b"x-switchboard-attempts", str(event.attempts).encode()),
    ]


class Gateway:
    def __init__(self, router: Router, recorder: UsageRecorder) -> None:
        self.router = router
        self.recorder = recorder

    @property
    def catalog(self) -> ModelCatalog:
        return self.router.catalog

    @contextmanager
    def metered(self, caller: Caller, endpoint: str) -> Iterator[UsageEvent]:
        event = UsageEvent(
            request_id=new_request_id(),
            tenant_id=caller.tenant.id,
            key_id=caller.key.id,
            created_at=utcnow(),
            endpoint=endpoint,
            started=time.perf_counter(),
        )
        try:
            yield event
        except SwitchboardError as exc:
            event.status, event.error = exc.status_code, exc.message
            raise
        except BaseException as exc:
            event.status, event.error = 500, f"internal error: {type(exc).__name__}"
            raise
        finally:
            if event.started and not event.stream:
                self.finish(event)

    def finish(self, event: UsageEvent) -> None:
        event.latency_ms = round((time.perf_counter() - event.started) * 1000)
        event.started = 0.0
        self.recorder.record(event)

    async def _attempt(
        self,
        caller: Caller,
        event: UsageEvent,
        model: str,
        call: Callable[[Deployment], Awaitable[T]],
    ) -> tuple[Deployment, T]:
        event.model = model
        attempts = Attempts()
        try:
            return await self.router.run(model, caller.tenant.usage_mode, attempts, call)
        finally:
            event.attempts = len(attempts)
            event.route = " ".join(attempts.log) or None
            if attempts.last is not None:
                event.provider = attempts.last.provider.name
                event.upstream_model = attempts.last.upstream_model

    async def chat(self, caller: Caller, event: UsageEvent, body: JSON) -> JSON:
        async def once(d: Deployment) -> JSON:
            call = d.provider.chat({**body, "model": d.upstream_model})
            return await _within(call, d.timeouts.total or d.timeouts.first_byte, d)

        deployment, result = await self._attempt(caller, event, body["model"], once)
        result["model"] = deployment.model
        usage = result.get("usage") or {}
        tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if tokens_in is None or tokens_out is None:
            event.tokens_estimated = True
            tokens_in = estimate_prompt_tokens(body["messages"])
            tokens_out = sum(_choice_tokens(c) for c in result.get("choices") or [])
        _charge(event, deployment, int(tokens_in), int(tokens_out))
        return result

    async def stream_chat(
        self, caller: Caller, event: UsageEvent, body: JSON, *, include_usage: bool
    ) -> MeteredStream:
        async def once(d: Deployment) -> Prefetched:
            upstream_body = {**body, "model": d.upstream_model}
            return await open_stream(d, upstream_body, first_byte=d.timeouts.first_byte)

        deployment, upstream = await self._attempt(caller, event, body["model"], once)
        event.stream = True  # from here on the stream owns the event and records it
        return MeteredStream(
            event=event,
            deployment=deployment,
            upstream=upstream,
            body=body,
            include_usage=include_usage,
            finish=self._settle_stream,
        )

    def _settle_stream(
        self, event: UsageEvent, deployment: Deployment, tokens_in: int, tokens_out: int
    ) -> None:
        _charge(event, deployment, tokens_in, tokens_out)
        self.finish(event)

    async def embed(self, caller: Caller, event: UsageEvent, body: JSON) -> JSON:
        async def once(d: Deployment) -> JSON:
            call = d.provider.embed({**body, "model": d.upstream_model})
            return await _within(call, d.timeouts.total or d.timeouts.first_byte, d)

        deployment, result = await self._attempt(caller, event, body["model"], once)
        result["model"] = deployment.model
        tokens = (result.get("usage") or {}).get("prompt_tokens")
        if tokens is None:
            event.tokens_estimated = True
            tokens = estimate_input_tokens(body["input"])
        _charge(event, deployment, int(tokens), 0)
        return result


async def _within(call: Awaitable[T], seconds: float | None, deployment: Deployment) -> T:
    if seconds is None:
        return await call
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise UpstreamTimeout(f"{deployment.label} did not answer within {seconds} s") from None


def _charge(event: UsageEvent, deployment: Deployment, tokens_in: int, tokens_out: int) -> None:
    event.tokens_input, event.tokens_output = tokens_in, tokens_out
    if deployment.price is not None:
        event.cost_usd = cost_usd(deployment.price, tokens_in, tokens_out)


def _choice_tokens(choice: dict[str, Any]) -> int:
    content = (choice.get("message") or {}).get("content")
    return (len(content) + 3) // 4 if isinstance(content, str) else 0

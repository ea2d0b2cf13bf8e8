"""One request's way through the gateway, after its surface has parsed and checked it:

    route (model → deployment, usage mode) → provider adapter → upstream → back → meter

Every request that passed authentication produces exactly one `UsageEvent`: `Gateway.metered`
opens it, and it is recorded when the request ends however it ends; a stream takes it over and
records it when the stream closes (finished, failed, or cut by the client).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from switchboard.auth.keys import Caller
from switchboard.errors import SwitchboardError
from switchboard.gateway.routing import Deployment, ModelCatalog
from switchboard.gateway.tokens import estimate_input_tokens, estimate_prompt_tokens
from switchboard.metering.prices import cost_usd
from switchboard.metering.recorder import UsageRecorder
from switchboard.metering.usage import UsageEvent
from switchboard.providers.base import JSON, ChunkStream
from switchboard.store.database import utcnow

CLIENT_CLOSED = 499
# Request ids: a random prefix per process and a counter, unique without a syscall per request.
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_ID_COUNTER):012x}"


class Gateway:
    def __init__(self, catalog: ModelCatalog, recorder: UsageRecorder) -> None:
        self.catalog = catalog
        self.recorder = recorder

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

    def route(self, caller: Caller, event: UsageEvent, model: str) -> Deployment:
        event.model = model
        deployment = self.catalog.resolve(model, caller.tenant.usage_mode)
        event.provider = deployment.provider.name
        event.upstream_model = deployment.upstream_model
        return deployment

    async def chat(self, caller: Caller, event: UsageEvent, body: JSON) -> JSON:
        deployment = self.route(caller, event, body["model"])
        result = await deployment.provider.chat({**body, "model": deployment.upstream_model})
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
        deployment = self.route(caller, event, body["model"])
        upstream = await deployment.provider.stream_chat(
            {**body, "model": deployment.upstream_model}
        )
        event.stream = True  # from here on the stream owns the event and records it
        return MeteredStream(
            gateway=self,
            event=event,
            deployment=deployment,
            upstream=upstream,
            body=body,
            include_usage=include_usage,
        )

    async def embed(self, caller: Caller, event: UsageEvent, body: JSON) -> JSON:
        deployment = self.route(caller, event, body["model"])
        result = await deployment.provider.embed({**body, "model": deployment.upstream_model})
        result["model"] = deployment.model
        tokens = (result.get("usage") or {}).get("prompt_tokens")
        if tokens is None:
            event.tokens_estimated = True
            tokens = estimate_input_tokens(body["input"])
        _charge(event, deployment, int(tokens), 0)
        return result


def _charge(event: UsageEvent, deployment: Deployment, tokens_in: int, tokens_out: int) -> None:
    event.tokens_input, event.tokens_output = tokens_in, tokens_out
    if deployment.price is not None:
        event.cost_usd = cost_usd(deployment.price, tokens_in, tokens_out)


def _choice_tokens(choice: dict[str, Any]) -> int:
    content = (choice.get("message") or {}).get("content")
    return (len(content) + 3) // 4 if isinstance(content, str) else 0


class MeteredStream:
    """The upstream's chunks on their way to the client, counted as they pass.

    Chunks are relabelled with the model name the client asked for; the usage chunk the
    gateway requested for itself is dropped unless the client asked for usage too.
    """

    def __init__(
        self,
        *,
        gateway: Gateway,
        event: UsageEvent,
        deployment: Deployment,
        upstream: ChunkStream,
        body: JSON,
        include_usage: bool,
    ) -> None:
        self.event = event
        self._gateway = gateway
        self._deployment = deployment
        self._upstream = upstream
        self._body = body
        self._include_usage = include_usage
        self._deltas = 0
        self._usage: dict[str, Any] | None = None
        self._finished = False
        self._client_gone = False

    def __aiter__(self) -> AsyncIterator[list[JSON]]:
        return self._relay()

    async def _relay(self) -> AsyncIterator[list[JSON]]:
        model = self._deployment.model
        keep_usage = self._include_usage
        try:
            async for batch in self._upstream:
                out: list[JSON] = []
                for chunk in batch:
                    usage = chunk.get("usage")
                    if usage:
                        self._usage = usage
                    chunk["model"] = model
                    choices = chunk.get("choices")
                    if not choices:
                        if keep_usage and usage:
                            out.append(chunk)
                        continue
                    if not keep_usage:
                        chunk.pop("usage", None)
                    for choice in choices:
                        delta = choice.get("delta") or {}
                        if delta.get("content") or delta.get("tool_calls"):
                            self._deltas += 1
                    out.append(chunk)
                if out:
                    if self.event.ttft_ms is None:
                        self.event.ttft_ms = round(
                            (time.perf_counter() - self.event.started) * 1000
                        )
                    yield out
        except SwitchboardError as exc:
            self.event.status, self.event.error = exc.status_code, exc.message
            raise

    def client_gone(self) -> None:
        self._client_gone = True

    async def aclose(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            await self._upstream.aclose()
        finally:
            self._settle()

    def _settle(self) -> None:
        event = self.event
        if self._client_gone:
            event.status, event.error = CLIENT_CLOSED, "client closed the connection mid-stream"
        usage = self._usage
        if usage and usage.get("prompt_tokens") is not None:
            tokens_in = int(usage["prompt_tokens"])
            tokens_out = int(usage.get("completion_tokens") or 0)
        else:
            event.tokens_estimated = True
            tokens_in = estimate_prompt_tokens(self._body["messages"])
            tokens_out = self._deltas
        _charge(event, self._deployment, tokens_in, tokens_out)
        self._gateway.finish(event)

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

import orjson

from switchboard.auth.keys import Caller
from switchboard.errors import SwitchboardError, UpstreamTimeout
from switchboard.gateway.assemble import assemble, replay
from switchboard.gateway.budgeting import WorstPrice
from switchboard.gateway.cache import (
    CacheKey,
    MemoryCache,
    ResponseCache,
    allows_cache,
    cache_key,
)
from switchboard.gateway.limiting import RequestLimits
from switchboard.gateway.router import Attempts, Router
from switchboard.gateway.routing import Deployment, ModelCatalog
from switchboard.gateway.scopes import Demand
from switchboard.gateway.screening import (
    check_model,
    refusal_completion,
    screen,
    screen_answer,
    screen_stream,
    visible_models,
)
from switchboard.gateway.streams import (
    CannedStream,
    ClientStream,
    MeteredStream,
    Prefetched,
    open_stream,
)
from switchboard.gateway.tokens import estimate_input_tokens, estimate_prompt_tokens
from switchboard.limits import MemoryLimiter
from switchboard.metering.charging import charge
from switchboard.metering.recorder import UsageRecorder
from switchboard.metering.usage import UsageEvent
from switchboard.observability.metrics import Metrics
from switchboard.providers.base import JSON
from switchboard.store.database import utcnow

T = TypeVar("T")
# Request ids: a random prefix per process and a counter, unique without a syscall per request.
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def route_headers(event: UsageEvent) -> list[tuple[bytes, bytes]]:
    """Which request, provider and deployment served, after how many attempts, and whether
    the answer came from the cache."""
    headers = [
        (b"x-request-id", event.request_id.encode()),
        (b"x-switchboard-provider", (event.provider or "").encode()),
        (b"x-switchboard-deployment", (event.upstream_model or "").encode()),
        (b"x-switchboard-attempts", str(event.attempts).encode()),
    ]
    if event.cached:
        headers.append((b"x-switchboard-cache", b"hit"))
    headers += event.response_headers
    return headers


_CacheSlot = tuple[CacheKey, float]  # the request's cache key, and how long its answer is kept


class Gateway:
    def __init__(
        self,
        router: Router,
        recorder: UsageRecorder,
        cache: ResponseCache | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.router = router
        self.recorder = recorder
        self.cache: ResponseCache = cache or MemoryCache()
        # In process, the cache is used without coroutines.
        self._local_cache = self.cache if isinstance(self.cache, MemoryCache) else None
        self.limits = limits or RequestLimits(MemoryLimiter())
        self.metrics = Metrics(known_model=self.catalog.__contains__)
        self._worst_prices: dict[tuple[str, str], tuple[float, WorstPrice]] = {}
        self._price_of = self._worst_price  # bound once: the limits step may call it per request

    def visible_models(self, caller: Caller) -> list[str]:
        return visible_models(self.catalog, caller)

    def _cache_slot(
        self, caller: Caller, endpoint: str, body: JSON, cache_control: str | None
    ) -> _CacheSlot | None:
        settings = caller.config.cache
        if not settings.enabled or (cache_control and not allows_cache(cache_control)):
            return None
        return cache_key(caller.tenant.id, endpoint, body), settings.ttl_seconds

    async def _cached(self, slot: _CacheSlot, event: UsageEvent, model: str) -> JSON | None:
        """The stored answer, relabelled with the model asked for; metered as cached. With
        the cache in process, `_cached_here` (no coroutine: most lookups miss)."""
        local = self._local_cache
        hit = local.lookup(slot[0]) if local is not None else await self.cache.get(slot[0])
        return _served_from_cache(hit, event, model) if hit is not None else None

    def _cached_here(self, slot: _CacheSlot, event: UsageEvent, model: str) -> JSON | None:
        hit = self._local_cache.lookup(slot[0])  # type: ignore[union-attr]  # callers check
        return _served_from_cache(hit, event, model) if hit is not None else None

    @property
    def catalog(self) -> ModelCatalog:
        return self.router.catalog

    def _worst_price(self, caller: Caller, model: str) -> WorstPrice:
        """The dearest price the model and its fallbacks could serve this tenant at (kept a
        minute per model and usage mode, so a new price version applies within a minute)."""
        mode = caller.tenant.usage_mode
        now = time.monotonic()
        cached = self._worst_prices.get((model, mode))
        if cached is not None and cached[0] > now:
            return cached[1]
        prices = [
            d.price.current.price
            for route in self.catalog.chain(model, mode)
            for d in route.allowed(mode)
            if d.price is not None
        ]
        found = WorstPrice(
            max((p.input_per_1m for p in prices), default=0.0),
            max((p.output_per_1m for p in prices), default=0.0),
        )
        if len(self._worst_prices) > 10_000:
            self._worst_prices.clear()
        self._worst_prices[(model, mode)] = (now + 60.0, found)
        return found

    @contextmanager
    def metered(self, caller: Caller, endpoint: str) -> Iterator[UsageEvent]:
        event = UsageEvent(
            request_id=new_request_id(),
            tenant_id=caller.tenant.id,
            key_id=caller.key.id,
            user_id=caller.key.user_id,  # the key's owner, unless the request names a user
            created_at=utcnow(),
            endpoint=endpoint,
            started=time.perf_counter(),
        )
        try:
            yield event
        except SwitchboardError as exc:
            event.status, event.error = exc.status_code, exc.message
            event.error_code = exc.code
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
        self.limits.settle(event)
        self.metrics.observe(event)
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

    async def chat(
        self, caller: Caller, event: UsageEvent, body: JSON, *, cache_control: str | None = None
    ) -> JSON:
        result, store = await self._chat(caller, event, body, cache_control)
        if store is not None:
            await self._store(store, orjson.dumps(result))
        return result

    async def chat_json(
        self, caller: Caller, event: UsageEvent, body: JSON, *, cache_control: str | None = None
    ) -> bytes:
        """`chat`, rendered as OpenAI's JSON body. A new answer the response cache keeps is
        serialised once, for the client and the cache."""
        result, store = await self._chat(caller, event, body, cache_control)
        raw = orjson.dumps(result)
        if store is not None:
            local = self._local_cache  # in process: no coroutine
            if local is not None:
                local.keep(store[0], raw, store[1])
            else:
                await self._store(store, raw)
        return raw

    async def _chat(
        self, caller: Caller, event: UsageEvent, body: JSON, cache_control: str | None
    ) -> tuple[JSON, _CacheSlot | None]:
        """The answer, and where to keep it if it is new and the response cache keeps it:
        nothing changes the answer after this, so it can be serialised once for both."""
        event.model = body["model"]
        check_model(caller, body["model"])  # a request it may not make costs no limits
        if not self.limits.admit_at_once(caller, event, _chat_demand, body, self._price_of):
            await self.limits.admit_in_general(caller, event, _chat_demand, body, self._price_of)
        screened, refusal = screen(caller, body)
        if refusal is not None:
            event.refusal_reason = refusal
            return refusal_completion(body["model"], refusal), None
        body = screened
        slot = self._cache_slot(caller, "chat", body, cache_control)
        if slot is not None:
            hit = (
                self._cached_here(slot, event, body["model"])
                if self._local_cache is not None
                else await self._cached(slot, event, body["model"])
            )
            if hit is not None:
                return screen_answer(caller, hit, event.request_id), None

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
        _charge(event, deployment, int(tokens_in), int(tokens_out), usage)
        return screen_answer(caller, result, event.request_id), slot

    async def stream_chat(
        self,
        caller: Caller,
        event: UsageEvent,
        body: JSON,
        *,
        include_usage: bool,
        cache_control: str | None = None,
    ) -> ClientStream:
        event.model = body["model"]
        check_model(caller, body["model"])  # a request it may not make costs no limits
        if not self.limits.admit_at_once(caller, event, _chat_demand, body, self._price_of):
            await self.limits.admit_in_general(caller, event, _chat_demand, body, self._price_of)
        screened, refusal = screen(caller, body)
        if refusal is not None:
            event.refusal_reason = refusal
            answer = refusal_completion(body["model"], refusal)
            return self._canned(event, answer, include_usage)
        body = screened
        slot = self._cache_slot(caller, "chat", body, cache_control)
        if slot is not None:
            hit = (
                self._cached_here(slot, event, body["model"])
                if self._local_cache is not None
                else await self._cached(slot, event, body["model"])
            )
            if hit is not None:
                canned = self._canned(event, hit, include_usage)
                return screen_stream(caller, canned, event.request_id)

        async def once(d: Deployment) -> Prefetched:
            upstream_body = {**body, "model": d.upstream_model}
            return await open_stream(d, upstream_body, first_byte=d.timeouts.first_byte)

        deployment, upstream = await self._attempt(caller, event, body["model"], once)
        event.stream = True  # from here on the stream owns the event and records it
        metered = MeteredStream(
            event=event,
            deployment=deployment,
            upstream=upstream,
            body=body,
            include_usage=include_usage,
            finish=self._settle_stream,
            on_complete=self._store_assembled(slot) if slot is not None else None,
        )
        return screen_stream(caller, metered, event.request_id)

    def _canned(self, event: UsageEvent, answer: JSON, include_usage: bool) -> CannedStream:
        event.stream = True  # the stream records the event when it closes
        return CannedStream(event, replay(answer, include_usage=include_usage), self.finish)

    def _store_assembled(self, slot: _CacheSlot) -> Callable[[list[JSON]], Awaitable[None]]:
        async def store(chunks: list[JSON]) -> None:
            await self._store(slot, orjson.dumps(assemble(chunks)))

        return store

    async def _store(self, slot: _CacheSlot, raw: bytes) -> None:
        local = self._local_cache
        if local is not None:
            local.keep(slot[0], raw, slot[1])
        else:
            await self.cache.set(slot[0], raw, slot[1])

    def _settle_stream(
        self,
        event: UsageEvent,
        deployment: Deployment,
        tokens_in: int,
        tokens_out: int,
        usage: JSON | None,
    ) -> None:
        _charge(event, deployment, tokens_in, tokens_out, usage)
        self.finish(event)

    async def embed(
        self, caller: Caller, event: UsageEvent, body: JSON, *, cache_control: str | None = None
    ) -> JSON:
        event.model = body["model"]
        check_model(caller, body["model"])
        if not self.limits.admit_at_once(caller, event, _embed_demand, body, self._price_of):
            await self.limits.admit_in_general(caller, event, _embed_demand, body, self._price_of)
        slot = self._cache_slot(caller, "embeddings", body, cache_control)
        if slot is not None:
            hit = await self._cached(slot, event, body["model"])
            if hit is not None:
                return hit

        async def once(d: Deployment) -> JSON:
            call = d.provider.embed({**body, "model": d.upstream_model})
            return await _within(call, d.timeouts.total or d.timeouts.first_byte, d)

        deployment, result = await self._attempt(caller, event, body["model"], once)
        result["model"] = deployment.model
        usage = result.get("usage") or {}
        tokens = usage.get("prompt_tokens")
        if tokens is None:
            event.tokens_estimated = True
            tokens = estimate_input_tokens(body["input"])
        _charge(event, deployment, int(tokens), 0, usage)
        if slot is not None:
            await self._store(slot, orjson.dumps(result))
        return result


async def _within(call: Awaitable[T], seconds: float | None, deployment: Deployment) -> T:
    if seconds is None:
        return await call
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise UpstreamTimeout(f"{deployment.label} did not answer within {seconds} s") from None


def _charge(
    event: UsageEvent, deployment: Deployment, tokens_in: int, tokens_out: int, usage: JSON | None
) -> None:
    """Tokens and provider cost, at the deployment's price version of the request's time."""
    charge(event, deployment.price, tokens_in, tokens_out, usage)


def _chat_demand(body: JSON) -> Demand:
    """What a chat request may use at most, as far as we can tell before it runs."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return estimate_prompt_tokens(body["messages"]), int(cap) if cap else None


def _embed_demand(body: JSON) -> Demand:
    return estimate_input_tokens(body["input"]), 0


def _served_from_cache(hit: JSON, event: UsageEvent, model: str) -> JSON:
    """A stored answer, relabelled with the model asked for; metered as cached, with its
    tokens, priced at 0."""
    hit["model"] = model
    event.cached = True
    usage = hit.get("usage") or {}
    event.tokens_input = int(usage.get("prompt_tokens") or 0)
    event.tokens_output = int(usage.get("completion_tokens") or 0)
    return hit


def _choice_tokens(choice: dict[str, Any]) -> int:
    content = (choice.get("message") or {}).get("content")
    return (len(content) + 3) // 4 if isinstance(content, str) else 0

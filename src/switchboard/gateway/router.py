"""Attempts: pick a deployment, try it, and on a retryable failure try again, elsewhere first.

For one client request the router walks the model's route and then its fallbacks. Within a
route it makes up to ``1 + retries`` attempts, each on a deployment picked by the route's
strategy among those whose circuit breaker lets traffic through, preferring deployments not
yet tried. Between attempts it waits with exponential backoff and jitter, or what the
upstream's ``Retry-After`` asked, capped. Everything happens before the first byte reaches the
client: a stream is only handed over once its first chunk has arrived, so a retry can never
duplicate streamed output.

    retryable (next attempt)         connect errors, resets, timeouts, 429, 5xx
    next deployment, no wait         the upstream refused (401/403/404 from the provider)
    next fallback, if configured     the prompt is too long for this model
    final (raised at once)           everything the client must fix (400, 413, ...)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from switchboard.config import RouterConfig
from switchboard.errors import (
    CONTEXT_WINDOW,
    RateLimited,
    SwitchboardError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard.gateway.routing import Deployment, ModelCatalog, ModelRoute
from switchboard.store.tenants import UsageMode

T = TypeVar("T")
log = logging.getLogger("switchboard.router")


@dataclass(slots=True)
class Attempts:
    """The attempts one request made, for its usage event and response headers."""

    log: list[str] = field(default_factory=list)
    last: Deployment | None = None

    def add(self, deployment: Deployment, outcome: str) -> None:
        self.log.append(f"{deployment.label}:{outcome}")
        self.last = deployment

    def __len__(self) -> int:
        return len(self.log)


def _outcome(exc: SwitchboardError) -> str:
    return str(exc.code or exc.status_code)


def is_retryable(exc: SwitchboardError) -> bool:
    if isinstance(exc, RateLimited):
        return exc.code == "upstream_rate_limited"  # our own limits are not retried
    return isinstance(exc, UpstreamUnavailable | UpstreamTimeout)


class Router:
    def __init__(
        self,
        catalog: ModelCatalog,
        config: RouterConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.catalog = catalog
        self._config = config
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def run(
        self,
        model: str,
        mode: UsageMode,
        attempts: Attempts,
        call: Callable[[Deployment], Awaitable[T]],
    ) -> tuple[Deployment, T]:
        """Serve ``model`` through ``call``; return the deployment that answered and its result."""
        last: SwitchboardError | None = None
        for route in self.catalog.chain(model, mode):
            try:
                return await self._route(route, mode, attempts, call)
            except SwitchboardError as exc:
                if exc.code == CONTEXT_WINDOW and not route.fallback_on_context_window:
                    raise
                if not (isinstance(exc, UpstreamError | RateLimited) or exc.code == CONTEXT_WINDOW):
                    raise
                last = exc
        assert last is not None
        raise last

    async def _route(
        self,
        route: ModelRoute,
        mode: UsageMode,
        attempts: Attempts,
        call: Callable[[Deployment], Awaitable[T]],
    ) -> tuple[Deployment, T]:
        candidates = route.allowed(mode)
        tried: set[int] = set()
        refused: set[int] = set()  # refused our credentials or model: not worth another try
        last: SwitchboardError | None = None
        for attempt in range(self._config.retries + 1):
            deployment = self._pick(route, [d for d in candidates if id(d) not in refused], tried)
            if deployment is None:
                break
            if attempt and last is not None and is_retryable(last):
                await self._sleep(self._backoff(attempt, last))
            tried.add(id(deployment))
            health = deployment.health
            health.in_flight += 1
            try:
                result = await call(deployment)
            except SwitchboardError as exc:
                if exc.code == CONTEXT_WINDOW or not (
                    is_retryable(exc) or isinstance(exc, UpstreamRejected)
                ):
                    health.breaker.record_success()  # it answered; the request was the problem
                    attempts.add(deployment, _outcome(exc))
                    raise
                was_open = health.breaker.state != "closed"
                health.breaker.record_failure()
                health.last_error = exc
                attempts.add(deployment, _outcome(exc))
                log.info("attempt on %s failed: %s", deployment.label, exc.message)
                if not was_open and health.breaker.state != "closed":
                    log.warning("circuit opened for %s: %s", deployment.label, exc.message)
                if isinstance(exc, UpstreamRejected):
                    refused.add(id(deployment))
                last = exc
                continue
            except BaseException:
                health.breaker.release_probe()
                raise
            finally:
                health.in_flight -= 1
            if health.breaker.state != "closed":
                log.warning("circuit closed again for %s", deployment.label)
            health.breaker.record_success()
            attempts.add(deployment, "ok")
            return deployment, result
        if last is None:
            raise _all_open(route, candidates)
        raise last

    def _pick(
        self, route: ModelRoute, candidates: list[Deployment], tried: set[int]
    ) -> Deployment | None:
        pool = [d for d in candidates if d.health.breaker.state != "open"]
        fresh = [d for d in pool if id(d) not in tried]
        pool = fresh or pool
        while pool:
            chosen = self._choose(route.strategy, pool)
            if chosen.health.breaker.allows():
                return chosen
            pool.remove(chosen)  # half-open with its one probe already out
        return None

    def _choose(self, strategy: str, pool: list[Deployment]) -> Deployment:
        if len(pool) == 1:
            return pool[0]
        if strategy == "least_busy":
            least = min(d.health.in_flight for d in pool)
            pool = [d for d in pool if d.health.in_flight == least]
            if len(pool) == 1:
                return pool[0]
        return self._rng.choices(pool, weights=[d.weight for d in pool])[0]

    def _backoff(self, attempt: int, last: SwitchboardError) -> float:
        cap = self._config.backoff_max_seconds
        if last.retry_after is not None:  # the upstream said when (429, 503)
            return min(last.retry_after, cap)
        base = self._config.backoff_base_seconds * 2.0 ** (attempt - 1)
        return min(base * (0.5 + self._rng.random()), cap)


def _all_open(
    route: ModelRoute, candidates: list[Deployment] | tuple[Deployment, ...]
) -> SwitchboardError:
    """Every deployment's breaker is open: say when to come back, and why, in the status the
    client knows (429 when the upstreams were throttling, so clients back off as they should)."""
    wait = min((d.health.breaker.view().open_for_seconds for d in candidates), default=0.0)
    if any(isinstance(d.health.last_error, RateLimited) for d in candidates):
        return RateLimited(
            f"every deployment of {route.name!r} is rate limited; retry in {wait:.0f} s",
            retry_after=max(wait, 1.0),
            code="upstream_rate_limited",
        )
    return UpstreamUnavailable(
        f"every deployment of {route.name!r} is failing (circuit open); retry in {wait:.0f} s",
        code="circuit_open",
    )

"""The router's decisions, with scripted providers, a recorded sleep and a seeded random source:
balancing, retries with backoff, failover, fallbacks within the usage mode, breakers."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from conftest import Clock
from switchboard.config import BreakerConfig, Locality, RouterConfig
from switchboard.errors import (
    CONTEXT_WINDOW,
    InvalidRequest,
    RateLimited,
    SwitchboardError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard.gateway.breaker import CircuitBreaker
from switchboard.gateway.router import Attempts, Router
from switchboard.gateway.routing import Deployment, Health, ModelCatalog, ModelRoute
from switchboard.providers.base import JSON, ChunkStream


class Scripted:
    """A provider whose chat answers come from a script: an error to raise, or "ok"."""

    def __init__(self, name: str, locality: Locality = "external") -> None:
        self.name = name
        self.locality: Locality = locality
        self.script: list[SwitchboardError | str] = []
        self.calls = 0

    async def chat(self, body: JSON) -> JSON:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, SwitchboardError):
            raise step
        return {"served_by": self.name}

    async def stream_chat(self, body: JSON) -> ChunkStream:
        raise AssertionError("not used")

    async def embed(self, body: JSON) -> JSON:
        raise AssertionError("not used")

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


def state_of(b: CircuitBreaker) -> str:
    return b.state


def deployment(
    model: str, provider: Scripted, *, weight: float = 1.0, breaker: CircuitBreaker | None = None
) -> Deployment:
    health = Health(breaker or CircuitBreaker(BreakerConfig(failure_threshold=100)))
    return Deployment(model, provider, f"{provider.name}-model", None, weight, health=health)


def router_for(
    routes: list[ModelRoute], retries: int = 2, backoff_max: float = 5.0
) -> tuple[Router, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    config = RouterConfig(
        retries=retries, backoff_base_seconds=0.2, backoff_max_seconds=backoff_max
    )
    router = Router(
        ModelCatalog({r.name: r for r in routes}), config, sleep=sleep, rng=random.Random(7)
    )
    return router, slept


def call_chat(body: JSON | None = None) -> Callable[[Deployment], Awaitable[JSON]]:
    async def call(d: Deployment) -> JSON:
        return await d.provider.chat(body or {})

    return call


async def test_weighted_balancing_follows_the_weights() -> None:
    a, b = Scripted("a"), Scripted("b")
    route = ModelRoute("m", (deployment("m", a, weight=3), deployment("m", b, weight=1)))
    router, _ = router_for([route])
    served: Counter[str] = Counter()
    for _ in range(2000):
        d, _result = await router.run("m", "hybrid", Attempts(), call_chat())
        served[d.provider.name] += 1
    assert served["a"] / 2000 == pytest.approx(0.75, abs=0.03)


async def test_least_busy_picks_the_idlest_deployment() -> None:
    a, b, c = Scripted("a"), Scripted("b"), Scripted("c")
    deps = (deployment("m", a), deployment("m", b), deployment("m", c))
    deps[0].health.in_flight, deps[1].health.in_flight, deps[2].health.in_flight = 5, 1, 3
    router, _ = router_for([ModelRoute("m", deps, strategy="least_busy")])
    for _ in range(20):
        d, _result = await router.run("m", "hybrid", Attempts(), call_chat())
        assert d.provider.name == "b"


async def test_retries_with_exponential_backoff_then_succeeds() -> None:
    a = Scripted("a")
    a.script = [UpstreamUnavailable("down"), UpstreamTimeout("slow")]
    router, slept = router_for([ModelRoute("m", (deployment("m", a),))], retries=2)
    attempts = Attempts()
    _d, result = await router.run("m", "hybrid", attempts, call_chat())
    assert result == {"served_by": "a"}
    assert a.calls == 3
    assert len(attempts) == 3
    assert attempts.log[-1].endswith(":ok")
    assert len(slept) == 2
    assert 0.1 <= slept[0] <= 0.3  # 0.2 s with jitter 0.5x-1.5x
    assert 0.2 <= slept[1] <= 0.6  # doubled


async def test_gives_up_after_the_retry_budget() -> None:
    a = Scripted("a")
    a.script = [UpstreamUnavailable(f"down {i}") for i in range(10)]
    router, _ = router_for([ModelRoute("m", (deployment("m", a),))], retries=2)
    attempts = Attempts()
    with pytest.raises(UpstreamUnavailable, match="down 2"):
        await router.run("m", "hybrid", attempts, call_chat())
    assert a.calls == 3
    assert len(attempts) == 3


async def test_a_failure_moves_to_an_untried_deployment_first() -> None:
    a, b = Scripted("a"), Scripted("b")
    a.script = [UpstreamUnavailable("down")] * 5
    b.script = [UpstreamUnavailable("down"), "ok"]
    route = ModelRoute("m", (deployment("m", a), deployment("m", b)))
    router, _ = router_for([route], retries=2)
    attempts = Attempts()
    _d, _result = await router.run("m", "hybrid", attempts, call_chat())
    # Both are tried before either is tried twice.
    first_two = {entry.split("/")[0] for entry in attempts.log[:2]}
    assert first_two == {"a", "b"}


async def test_retry_after_is_honoured_and_capped() -> None:
    a = Scripted("a")
    a.script = [
        RateLimited("slow down", retry_after=1.5, code="upstream_rate_limited"),
        RateLimited("slow down", retry_after=60, code="upstream_rate_limited"),
    ]
    router, slept = router_for([ModelRoute("m", (deployment("m", a),))], backoff_max=4.0)
    await router.run("m", "hybrid", Attempts(), call_chat())
    assert slept == [1.5, 4.0]


async def test_an_overloaded_upstream_is_retried_after_the_time_it_asked_for() -> None:
    a = Scripted("a")
    a.script = [UpstreamOverloaded("overloaded (529)", retry_after=2.0)]
    router, slept = router_for([ModelRoute("m", (deployment("m", a),))], backoff_max=4.0)
    await router.run("m", "hybrid", Attempts(), call_chat())
    assert slept == [2.0]


async def test_client_errors_are_not_retried_and_do_not_trip_the_breaker() -> None:
    a = Scripted("a")
    a.script = [InvalidRequest("bad temperature", code="upstream_bad_request")]
    route = ModelRoute("m", (deployment("m", a),))
    router, slept = router_for([route])
    with pytest.raises(InvalidRequest):
        await router.run("m", "hybrid", Attempts(), call_chat())
    assert a.calls == 1
    assert slept == []
    assert route.deployments[0].health.breaker.view().consecutive_failures == 0


async def test_refused_credentials_fail_over_without_waiting_or_retrying_there() -> None:
    a, b = Scripted("a"), Scripted("b")
    a.script = [UpstreamRejected("bad key")] * 5
    b.script = [UpstreamUnavailable("down"), "ok"]
    route = ModelRoute("m", (deployment("m", a, weight=1000), deployment("m", b, weight=1)))
    router, _ = router_for([route], retries=3)
    d, _result = await router.run("m", "hybrid", Attempts(), call_chat())
    assert d.provider.name == "b"
    assert a.calls == 1


async def test_fallback_serves_when_every_deployment_failed() -> None:
    a, backup = Scripted("a"), Scripted("backup")
    a.script = [UpstreamUnavailable("down")] * 10
    routes = [
        ModelRoute("primary", (deployment("primary", a),), fallbacks=("secondary",)),
        ModelRoute("secondary", (deployment("secondary", backup),)),
    ]
    router, _ = router_for(routes, retries=1)
    attempts = Attempts()
    d, _result = await router.run("primary", "hybrid", attempts, call_chat())
    assert d.model == "secondary"
    assert attempts.log == [
        "a/a-model:upstream_unavailable",
        "a/a-model:upstream_unavailable",
        "backup/backup-model:ok",
    ]


async def test_a_local_tenant_never_falls_back_to_an_external_provider() -> None:
    local, cloud = Scripted("local", "local"), Scripted("cloud", "external")
    local.script = [UpstreamUnavailable("down")] * 10
    routes = [
        ModelRoute("on-prem", (deployment("on-prem", local),), fallbacks=("cloud",)),
        ModelRoute("cloud", (deployment("cloud", cloud),)),
    ]
    router, _ = router_for(routes, retries=1)
    with pytest.raises(UpstreamUnavailable):
        await router.run("on-prem", "local", Attempts(), call_chat())
    assert cloud.calls == 0
    # The same config serves a hybrid tenant through the fallback.
    d, _result = await router.run("on-prem", "hybrid", Attempts(), call_chat())
    assert d.provider.name == "cloud"


@pytest.mark.parametrize("configured", [True, False])
async def test_context_window_errors_fall_back_only_when_configured(configured: bool) -> None:
    small, large = Scripted("small"), Scripted("large")
    small.script = [InvalidRequest("prompt is too long", code=CONTEXT_WINDOW)]
    routes = [
        ModelRoute(
            "small",
            (deployment("small", small),),
            fallbacks=("large",),
            fallback_on_context_window=configured,
        ),
        ModelRoute("large", (deployment("large", large),)),
    ]
    router, _ = router_for(routes)
    if configured:
        d, _result = await router.run("small", "hybrid", Attempts(), call_chat())
        assert d.model == "large"
    else:
        with pytest.raises(InvalidRequest):
            await router.run("small", "hybrid", Attempts(), call_chat())
        assert large.calls == 0
    assert small.calls == 1


async def test_an_open_breaker_stops_traffic_then_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, cooldown_seconds=30), clock)
    a = Scripted("a")
    a.script = [UpstreamUnavailable("down")] * 2
    route = ModelRoute("m", (deployment("m", a, breaker=breaker),))
    router, _ = router_for([route], retries=1)
    with pytest.raises(UpstreamUnavailable):
        await router.run("m", "hybrid", Attempts(), call_chat())
    assert state_of(breaker) == "open"
    with pytest.raises(UpstreamUnavailable) as err:
        await router.run("m", "hybrid", Attempts(), call_chat())
    assert err.value.code == "circuit_open"
    assert a.calls == 2  # the open breaker kept the third request away
    clock.now += 31
    assert state_of(breaker) == "half_open"
    _d, _result = await router.run("m", "hybrid", Attempts(), call_chat())
    assert state_of(breaker) == "closed"
    assert a.calls == 3


async def test_open_breakers_send_traffic_to_the_healthy_deployment() -> None:
    clock = Clock()
    bad_breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, cooldown_seconds=30), clock)
    bad, good = Scripted("bad"), Scripted("good")
    bad.script = [UpstreamUnavailable("down")] * 100
    route = ModelRoute(
        "m", (deployment("m", bad, weight=100, breaker=bad_breaker), deployment("m", good))
    )
    router, _ = router_for([route])
    for _ in range(50):
        d, _result = await router.run("m", "hybrid", Attempts(), call_chat())
        assert d.provider.name == "good"
    assert bad.calls == 1


async def test_a_breaker_opened_by_throttling_answers_429_with_when_to_retry() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=2, cooldown_seconds=30), clock)
    a = Scripted("a")
    a.script = [RateLimited("slow down", retry_after=1, code="upstream_rate_limited")] * 2
    router, _ = router_for([ModelRoute("m", (deployment("m", a, breaker=breaker),))], retries=1)
    with pytest.raises(RateLimited):
        await router.run("m", "hybrid", Attempts(), call_chat())
    clock.now += 10
    with pytest.raises(RateLimited) as err:
        await router.run("m", "hybrid", Attempts(), call_chat())
    assert err.value.code == "upstream_rate_limited"
    assert err.value.retry_after == pytest.approx(20)
    assert a.calls == 2

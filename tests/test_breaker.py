"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

from conftest import Clock
from switchboard.config import BreakerConfig
from switchboard.gateway.breaker import CircuitBreaker


def state_of(b: CircuitBreaker) -> str:
    """Read through a function, so the type checker does not narrow the state between checks."""
    return b.state


def breaker(clock: Clock, **config: float) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**config), clock)


def test_opens_after_consecutive_failures() -> None:
    clock = Clock(50.0)
    b = breaker(clock, failure_threshold=3, cooldown_seconds=10)
    for _ in range(2):
        b.record_failure()
    assert state_of(b) == "closed"
    assert b.allows()
    b.record_failure()
    assert state_of(b) == "open"
    assert not b.allows()
    assert b.view().open_for_seconds == 10


def test_a_success_resets_the_consecutive_count() -> None:
    b = breaker(Clock(50.0), failure_threshold=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert state_of(b) == "closed"


def test_opens_on_failure_rate_over_a_full_window() -> None:
    b = breaker(Clock(50.0), failure_threshold=100, failure_rate=0.5, window=10)
    for i in range(9):
        (b.record_failure if i % 2 else b.record_success)()
    assert state_of(b) == "closed"  # window not full yet
    b.record_failure()  # 5 failures of 10
    assert state_of(b) == "open"


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock(50.0)
    b = breaker(clock, failure_threshold=1, cooldown_seconds=5)
    b.record_failure()
    clock.now += 4.9
    assert not b.allows()
    clock.now += 0.2
    assert state_of(b) == "half_open"
    assert b.allows()
    assert not b.allows()  # the probe is out
    b.record_success()
    assert state_of(b) == "closed"
    assert b.allows()


def test_a_failed_probe_opens_it_again_for_a_full_cooldown() -> None:
    clock = Clock(50.0)
    b = breaker(clock, failure_threshold=1, cooldown_seconds=5)
    b.record_failure()
    clock.now += 6
    assert b.allows()
    b.record_failure()
    assert state_of(b) == "open"
    clock.now += 4
    assert state_of(b) == "open"
    clock.now += 2
    assert state_of(b) == "half_open"


def test_a_probe_without_verdict_frees_the_slot() -> None:
    clock = Clock(50.0)
    b = breaker(clock, failure_threshold=1, cooldown_seconds=5)
    b.record_failure()
    clock.now += 6
    assert b.allows()
    b.release_probe()
    assert b.allows()

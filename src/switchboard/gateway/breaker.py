"""A circuit breaker per deployment, so a failing upstream stops costing every request a try.

    closed ──(N consecutive failures, or failure rate over the window)──▶ open
      ▲                                                                   │ cooldown
      └──────────── probe succeeds ◀── half-open (one probe at a time) ◀──┘
                                            │ probe fails
                                            └──────────▶ open again

State lives in each worker process; every worker learns on its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from switchboard.config import BreakerConfig

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerView:
    state: State
    consecutive_failures: int
    failure_rate: float
    open_for_seconds: float


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=config.window)
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._config.cooldown_seconds:
            return "half_open"
        return "open"

    def allows(self) -> bool:
        """May a request go to this deployment now? In half-open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._outcomes.append(True)
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._outcomes.append(False)
        self._consecutive += 1
        if self._probing or self._should_open():
            self._opened_at = self._clock()
        self._probing = False

    def release_probe(self) -> None:
        """A probe ended without a verdict (e.g. the client left): let another one through."""
        self._probing = False

    def _should_open(self) -> bool:
        if self._consecutive >= self._config.failure_threshold:
            return True
        full = len(self._outcomes) == self._outcomes.maxlen
        return full and self._failure_rate() >= self._config.failure_rate

    def _failure_rate(self) -> float:
        if not self._outcomes:
            return 0.0
        return self._outcomes.count(False) / len(self._outcomes)

    def view(self) -> BreakerView:
        remaining = 0.0
        if self._opened_at is not None:
            elapsed = self._clock() - self._opened_at
            remaining = max(0.0, self._config.cooldown_seconds - elapsed)
        return BreakerView(self.state, self._consecutive, self._failure_rate(), remaining)

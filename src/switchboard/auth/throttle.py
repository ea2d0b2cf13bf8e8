"""Login throttling: after too many failures for one (tenant, e-mail, client address), that
combination is refused for a while, whether or not the e-mail exists.

Counted in this worker process: with N workers an attacker gets at most N times the allowance
before every worker locks the combination. A success clears the count.
"""

from __future__ import annotations

import time
from collections import deque

from switchboard.errors import RateLimited

_MAX_TRACKED = 100_000


class LoginThrottle:
    def __init__(self, *, max_failures: int, window_seconds: float) -> None:
        self._max = max_failures
        self._window = window_seconds
        self._failures: dict[tuple[str, str, str], deque[float]] = {}

    def check(self, key: tuple[str, str, str]) -> None:
        """Raise 429 while ``key`` has ``max_failures`` failures within the window."""
        recent = self._recent(key)
        if recent is not None and len(recent) >= self._max:
            retry_after = recent[0] + self._window - time.monotonic()
            raise RateLimited(
                "too many failed sign-in attempts; try again later",
                retry_after=max(1.0, retry_after),
                code="login_throttled",
            )

    def failed(self, key: tuple[str, str, str]) -> None:
        recent = self._recent(key)
        if recent is None:
            if len(self._failures) >= _MAX_TRACKED:
                self._failures.clear()
            recent = self._failures[key] = deque(maxlen=self._max)
        recent.append(time.monotonic())

    def succeeded(self, key: tuple[str, str, str]) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: tuple[str, str, str]) -> deque[float] | None:
        recent = self._failures.get(key)
        if recent is None:
            return None
        horizon = time.monotonic() - self._window
        while recent and recent[0] < horizon:
            recent.popleft()
        if not recent:
            del self._failures[key]
            return None
        return recent

"""The limits step of the pipe: the tenant's request and token rates, checked before routing.

Rules come from the tenant config (``rate_limit_per_minute``, ``rate_limit_per_hour``,
``tokens_per_minute``). The token rule reserves an estimate (prompt plus ``max_tokens``) when
the request is admitted; when the request's usage event is recorded, the reservation is
settled to the real count (zero for refusals and cache hits, which never reached an upstream).
The decision's ``x-ratelimit-*`` headers go on the response, and on the 429 when refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from switchboard.auth.keys import Caller
from switchboard.limits import Check, Limiter, Rule, headers, rate_limited, tenant_scope
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.limits")


class TenantLimits:
    def __init__(self, limiter: Limiter, settle_every: float = 0.05) -> None:
        self.limiter = limiter
        self._settle_every = settle_every
        self._owed: dict[tuple[str, Rule], int] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._flush_scheduled = False

    async def admit(self, caller: Caller, event: UsageEvent, estimate: Callable[[], int]) -> None:
        """``estimate`` (the request's most tokens) is only called when a token rule needs it."""
        config = caller.config
        token_rule = config.token_rule
        if not config.request_rules and token_rule is None:
            return
        scope = tenant_scope(caller.tenant.id)
        checks: list[Check] = [(scope, rule, 1) for rule in config.request_rules]
        estimated_tokens = 0
        if token_rule is not None:
            estimated_tokens = estimate()
            checks.append((scope, token_rule, estimated_tokens))
        decision = await self.limiter.admit(checks)
        event.response_headers = headers(decision)
        if not decision.allowed:
            error = rate_limited(decision)
            error.headers = event.response_headers
            raise error
        if token_rule is not None:
            event.token_reservation = (token_rule, estimated_tokens)

    def settle(self, event: UsageEvent) -> None:
        """Correct the token reservation to what the request really used. Corrections are
        summed per bucket and applied together every ``settle_every`` seconds, off the hot
        path (one limiter call per bucket, not one per request)."""
        if event.token_reservation is None:
            return
        rule, reserved = event.token_reservation
        used = (
            0 if event.cached or event.refusal_reason else event.tokens_input + event.tokens_output
        )
        if used == reserved:
            return
        key = (tenant_scope(event.tenant_id), rule)
        self._owed[key] = self._owed.get(key, 0) + used - reserved
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self._settle_every, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        owed, self._owed = self._owed, {}
        self._flushing = asyncio.get_running_loop().create_task(self._flush(owed))

    async def _flush(self, owed: dict[tuple[str, Rule], int]) -> None:
        for (scope, rule), delta in owed.items():
            if delta:
                try:
                    await self.limiter.settle(scope, rule, delta)
                except Exception as exc:  # a settlement is best effort; the next one goes on
                    log.warning("settling %s tokens for %s failed: %s", delta, scope, exc)

    async def aclose(self) -> None:
        if self._owed:
            owed, self._owed = self._owed, {}
            await self._flush(owed)
        if self._flushing is not None:
            await asyncio.wait({self._flushing}, timeout=5)
        await self.limiter.aclose()

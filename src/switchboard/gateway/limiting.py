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

from switchboard.auth.keys import Caller
from switchboard.limits import Check, Limiter, Rule, headers, rate_limited, tenant_scope
from switchboard.metering.usage import UsageEvent

log = logging.getLogger("switchboard.limits")


class TenantLimits:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(self, caller: Caller, event: UsageEvent, estimated_tokens: int) -> None:
        config = caller.config
        scope = tenant_scope(caller.tenant.id)
        checks: list[Check] = []
        if config.rate_limit_per_minute:
            checks.append((scope, Rule("requests", config.rate_limit_per_minute, 60), 1))
        if config.rate_limit_per_hour:
            checks.append((scope, Rule("requests", config.rate_limit_per_hour, 3600), 1))
        token_rule = None
        if config.tokens_per_minute:
            token_rule = Rule("tokens", config.tokens_per_minute, 60)
            checks.append((scope, token_rule, estimated_tokens))
        if not checks:
            return
        decision = await self.limiter.admit(checks)
        event.response_headers = headers(decision)
        if not decision.allowed:
            error = rate_limited(decision)
            error.headers = event.response_headers
            raise error
        if token_rule is not None:
            event.token_reservation = (token_rule, estimated_tokens)

    def settle(self, event: UsageEvent) -> None:
        """Correct the token reservation to what the request really used (off the hot path)."""
        if event.token_reservation is None:
            return
        rule, reserved = event.token_reservation
        used = (
            0 if event.cached or event.refusal_reason else event.tokens_input + event.tokens_output
        )
        if used == reserved:
            return
        task = asyncio.get_running_loop().create_task(
            self.limiter.settle(tenant_scope(event.tenant_id), rule, used - reserved)
        )
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("settling a token reservation failed: %s", task.exception())

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.wait(self._settling, timeout=5)
        await self.limiter.aclose()

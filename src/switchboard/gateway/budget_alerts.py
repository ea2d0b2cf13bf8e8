"""Budget alerts leave the gateway as a JSON POST to the platform's and the tenant's webhooks.

    {"type": "budget.threshold" | "budget.exceeded", "tenant_id": "...", "scope": "tenant:...",
     "month": "2026-11", "spent_usd": 80.12, "budget_usd": 100.0, "percent": 80.0,
     "sent_at": "2026-11-23T04:00:00Z"}

Delivery is best effort (one attempt, 5 s timeout); failures are logged, and the alert itself is
always in the log (see `gateway.limiting`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import orjson

from switchboard.gateway.budgeting import BudgetAlert

log = logging.getLogger("switchboard.budgets")


class WebhookNotifier:
    def __init__(self, platform_url: str | None = None, timeout: float = 5.0) -> None:
        self._platform_url = platform_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, alert: BudgetAlert) -> None:
        urls = {u for u in (self._platform_url, alert.webhook_url) if u}
        if not urls:
            return
        body = orjson.dumps(
            {
                "type": f"budget.{alert.kind}",
                "tenant_id": alert.tenant_id,
                "scope": alert.scope,
                "month": alert.month,
                "spent_usd": round(alert.spent_usd, 6),
                "budget_usd": alert.budget_usd,
                "percent": alert.percent,
                "sent_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        )
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        for url in sorted(urls):
            try:
                async with self._session.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as response:
                    if response.status >= 300:
                        log.warning("budget webhook %s answered %d", _origin(url), response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("budget webhook %s failed: %s", _origin(url), type(exc).__name__)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _origin(url: str) -> str:
    """Scheme and host only: webhook paths and queries often carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"

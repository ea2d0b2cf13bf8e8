"""Lago: the mapping from a ledger row to a Lago usage event, and the events-batch client.

Mapping (one ledger row → one Lago event):

* ``transaction_id`` is the request id, stable across retries, so Lago deduplicates a resend;
* ``external_subscription_id`` is ``sb_<tenant id>`` (`subscription_id`): deterministic, so
  nothing has to be looked up per event. The Lago subscriptions carrying those external ids
  are created out of band (a later ``lago sync``); until then Lago stores but does not bill;
* ``code`` is the configured billable metric code (``SWITCHBOARD_LAGO_METRIC_CODE``);
* ``timestamp`` is the request time in whole Unix seconds;
* ``properties``: model, provider, tokens_input, tokens_output, total_tokens, cost (our
  ``cost_usd``), billed_amount and currency (the tenant's plan applied; the billable metric
  `switchboard.metering.lago_sync` creates sums ``billed_amount``) and user (omitted when
  unknown).

Client: ``POST {base_url}/api/v1/events/batch`` with ``Authorization: Bearer <key>``, at most
`MAX_BATCH` events. Lago validates a batch as a whole: one invalid event rejects the batch
with 422 ``validation_errors`` and ``error_details`` keyed by the event's index, and nothing
of that batch is stored. `LagoClient.send` turns every answer into one `Delivery` per event:

====================================================  =========================================
answer                                                 per event
====================================================  =========================================
2xx                                                    DELIVERED
connection error, timeout, 5xx, 429, 408, 401, 403     RETRY (401/403: the key is wrong; the
                                                       operator fixes it, nothing is lost)
422 per index, only ``transaction_id`` already exists  DUPLICATE (Lago has it: delivered)
422 per index, anything else                           DEAD, with Lago's message
422 per index, event not named                         RESEND (valid, but its batch was refused)
other 4xx (or 422 not per index), batch of one         DEAD, with Lago's message
other 4xx (or 422 not per index), larger batch         SPLIT (send the events one by one to
                                                       find the bad one)
====================================================  =========================================
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

MAX_BATCH = 100
DUPLICATE_CODE = "value_already_exist"
_RETRYABLE_4XX = frozenset({401, 403, 408, 429})
_MESSAGE_LIMIT = 2000


def subscription_id(tenant_id: str) -> str:
    """The Lago ``external_subscription_id`` of a tenant."""
    return f"sb_{tenant_id}"


def to_lago_event(row: Mapping[str, Any], metric_code: str) -> dict[str, Any]:
    """One ledger row (a `usage_events` mapping) as a Lago event."""
    created: datetime = row["created_at"]
    if created.tzinfo is None:  # SQLite hands back naive UTC
        created = created.replace(tzinfo=UTC)
    tokens_in = int(row["tokens_input"])
    tokens_out = int(row["tokens_output"])
    cost = float(row["cost_usd"])
    properties: dict[str, Any] = {
        "model": row["model"],
        "tokens_input": tokens_in,
        "tokens_output": tokens_out,
        "total_tokens": tokens_in + tokens_out,
        "cost": cost,
        "billed_amount": float(row["billed_amount"]),
        "currency": row["currency"],
    }
    if row.get("provider") is not None:
        properties["provider"] = row["provider"]
    if row.get("user_id") is not None:
        properties["user"] = row["user_id"]
    return {
        "transaction_id": row["request_id"],
        "external_subscription_id": subscription_id(row["tenant_id"]),
        "code": metric_code,
        "timestamp": int(created.timestamp()),
        "properties": properties,
    }


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # Lago already had it: as good as delivered
    RETRY = "retry"  # try again later, with back-off
    RESEND = "resend"  # valid, but refused with its batch: send again now
    SPLIT = "split"  # the batch was refused as a whole: send its events one by one
    DEAD = "dead"  # Lago will never accept it as it is


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    message: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE)


class LagoClient:
    """Sends event batches to Lago. One aiohttp session, opened on first use."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._url = base_url.rstrip("/") + "/api/v1/events/batch"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, events: Sequence[Mapping[str, Any]]) -> list[Delivery]:
        """Send up to `MAX_BATCH` events; one `Delivery` per event, in order."""
        if not events:
            return []
        if len(events) > MAX_BATCH:
            raise ValueError(f"Lago accepts at most {MAX_BATCH} events per batch")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                self._url, json={"events": list(events)}, headers=self._headers
            ) as resp:
                status = resp.status
                body = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [Delivery(Outcome.RETRY, f"Lago unreachable: {exc!r}")] * len(events)
        return classify(status, body, len(events))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def classify(status: int, body: str, count: int) -> list[Delivery]:
    """Map Lago's answer to a batch of ``count`` events to one `Delivery` per event."""
    if 200 <= status < 300:
        return [Delivery(Outcome.DELIVERED)] * count
    message = _message(status, body)
    if status >= 500 or status in _RETRYABLE_4XX:
        return [Delivery(Outcome.RETRY, message)] * count
    details = _error_details(body) if status == 422 else None
    per_index = _per_index(details, count) if details is not None else None
    if per_index is not None:
        return [_event_delivery(per_index.get(i)) for i in range(count)]
    if count == 1:
        if details is not None and _only_duplicate(details):
            return [Delivery(Outcome.DUPLICATE, message)]
        return [Delivery(Outcome.DEAD, message)]
    return [Delivery(Outcome.SPLIT, message)] * count


def _event_delivery(errors: Mapping[str, Any] | None) -> Delivery:
    if not errors:
        return Delivery(Outcome.RESEND, "refused with its batch")
    text = json.dumps(errors, sort_keys=True)
    if _only_duplicate(errors):
        return Delivery(Outcome.DUPLICATE, text)
    return Delivery(Outcome.DEAD, f"422 validation_errors: {text}"[:_MESSAGE_LIMIT])


def _only_duplicate(errors: Mapping[str, Any]) -> bool:
    return set(errors) == {"transaction_id"} and set(errors["transaction_id"]) == {DUPLICATE_CODE}


def _error_details(body: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    details = parsed.get("error_details")
    return details if isinstance(details, dict) else None


def _per_index(details: Mapping[str, Any], count: int) -> dict[int, Mapping[str, Any]] | None:
    """``error_details`` keyed by event index (``{"0": {"field": [codes]}}``), or None."""
    out: dict[int, Mapping[str, Any]] = {}
    for key, value in details.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(value, dict)):
            return None
        index = int(key)
        if index >= count:
            return None
        out[index] = value
    return out or None


def _message(status: int, body: str) -> str:
    text = body.strip() or "(empty body)"
    return f"{status}: {text}"[:_MESSAGE_LIMIT]

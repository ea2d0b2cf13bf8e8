"""Fake Lago API: ``POST /api/v1/events/batch``, checking what real Lago checks.

Modelled on Lago's documentation (batch endpoint: up to 100 events, ``Authorization: Bearer``,
200 ``{"events": [...]}``) and on lago-api's ``Events::CreateBatchService`` and ``Event``
model:

* no or wrong key → 401 ``{"status": 401, "error": "Unauthorized"}``;
* no events → 422 ``error_details: {"events": ["no_events"]}``; more than 100 →
  ``{"events": ["too_many_events"]}``;
* each event is validated; a batch with any invalid event is refused as a whole (nothing of it
  is stored) with 422 ``{"status": 422, "error": "Unprocessable Entity", "code":
  "validation_errors", "error_details": {"<index>": {"<field>": ["<code>"]}}}``. Checks:
  ``transaction_id``, ``code`` and ``external_subscription_id`` present (``value_is_mandatory``),
  ``timestamp`` a number or numeric string (``invalid_format``), ``properties`` an object;
* a ``transaction_id`` already stored for the same ``external_subscription_id`` (Lago's unique
  index is organisation + external subscription id + transaction id), or repeated within the
  batch, is ``{"transaction_id": ["value_already_exist"]}`` — the code Lago's single-event
  service uses for that unique index. Uncertain: the batch service seen does not rescue the
  unique violation itself, and newer ClickHouse-backed Lago may deduplicate silently; the
  exporter treats both a 2xx and this 422 as delivered.

Switches (``app.state``): ``down = True`` → 503 before anything is looked at;
``fail_next = [status, ...]`` → the next requests get those statuses (Lago-style bodies);
``delay`` seconds before answering. Records: ``refused`` (requests answered by a switch), ``stored`` (accepted events, in order),
``received`` (a Counter of every transaction id in every request Lago processed, accepted or
not), ``duplicates`` (events refused as already existing), ``batch_sizes``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MAX_BATCH = 100
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, code: str | None = None, details: object = None) -> Response:
    body: dict[str, Any] = {"status": status, "error": _REASONS.get(status, "Error")}
    if code is not None:
        body["code"] = code
    if details is not None:
        body["error_details"] = details
    return _json(status, body)


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _event_errors(event: object) -> dict[str, list[str]]:
    if not isinstance(event, dict):
        return {"event": ["invalid_format"]}
    errors: dict[str, list[str]] = {}
    for name in ("transaction_id", "code", "external_subscription_id"):
        if _blank(event.get(name)):
            errors[name] = ["value_is_mandatory"]
    stamp = event.get("timestamp")
    if stamp is not None:
        try:
            if isinstance(stamp, bool):
                raise ValueError(stamp)
            float(stamp)
        except (TypeError, ValueError):
            errors["timestamp"] = ["invalid_format"]
    if event.get("properties") is not None and not isinstance(event["properties"], dict):
        errors["properties"] = ["invalid_format"]
    return errors


def create_app(api_key: str) -> Starlette:
    lock = threading.Lock()  # tests read the records from another thread

    async def batch(request: Request) -> Response:
        state = request.app.state
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.down:
            state.refused += 1
            return _error(503)
        if state.fail_next:
            state.refused += 1
            return _error(state.fail_next.pop(0))
        if request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "bad_request")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not events:
            return _error(422, "validation_errors", {"events": ["no_events"]})
        if len(events) > MAX_BATCH:
            return _error(422, "validation_errors", {"events": ["too_many_events"]})
        with lock:
            state.batch_sizes.append(len(events))
            details: dict[str, dict[str, list[str]]] = {}
            in_batch: set[tuple[str, str]] = set()
            for index, event in enumerate(events):
                errors = _event_errors(event)
                if isinstance(event, dict) and isinstance(event.get("transaction_id"), str):
                    state.received[event["transaction_id"]] += 1
                    key = (str(event.get("external_subscription_id")), event["transaction_id"])
                    if "transaction_id" not in errors and (key in state.keys or key in in_batch):
                        errors["transaction_id"] = ["value_already_exist"]
                        state.duplicates += 1
                    in_batch.add(key)
                if errors:
                    details[str(index)] = errors
            if details:
                return _error(422, "validation_errors", details)
            accepted = []
            for event in events:
                state.keys.add((event["external_subscription_id"], event["transaction_id"]))
                state.stored.append(event)
                accepted.append(
                    {
                        "lago_id": f"lago_{len(state.stored)}",
                        "lago_customer_id": None,
                        "lago_subscription_id": None,
                        **event,
                    }
                )
        return _json(200, {"events": accepted})

    app = Starlette(routes=[Route("/api/v1/events/batch", batch, methods=["POST"])])
    app.state.down = False
    app.state.fail_next = []
    app.state.delay = 0.0
    app.state.stored = []
    app.state.keys = set()
    app.state.received = Counter()
    app.state.duplicates = 0
    app.state.refused = 0
    app.state.batch_sizes = []
    app.state.lock = lock
    return app

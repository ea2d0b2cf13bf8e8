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

Resource endpoints for ``switchboard lago sync`` (lago-api's ``Api::V1`` controllers): bodies
wrapped in the object's name, answers ``{"<object>": {...}}`` with a ``lago_id``; unknown
objects → 404 ``{"status": 404, "error": "Not Found", "code": "<object>_not_found"}``; invalid
ones → 422 ``validation_errors`` with ``error_details: {"<field>": ["<code>"]}``:

* ``GET /api/v1/billable_metrics/{code}``, ``POST /api/v1/billable_metrics`` (a code in use →
  ``{"code": ["value_already_exist"]}``), ``PUT /api/v1/billable_metrics/{code}``; checks name,
  code, ``aggregation_type`` (count_agg, sum_agg, max_agg, unique_count_agg, weighted_sum_agg,
  latest_agg) and ``field_name`` (mandatory except for count_agg);
* ``GET /api/v1/customers/{external_id}``, ``POST /api/v1/customers`` (creates, or updates the
  customer with that ``external_id``); checks ``external_id`` and the ``currency`` code;
* ``GET /api/v1/plans/{code}``, ``POST /api/v1/plans`` (code in use → 422), ``PUT
  /api/v1/plans/{code}``; checks name, code, ``interval``, integer ``amount_cents``,
  ``amount_currency``, and each charge: ``billable_metric_id`` of a stored metric (else 404
  ``billable_metric_not_found``), ``charge_model``, and for ``percentage`` a numeric ``rate``;
* ``GET /api/v1/subscriptions/{external_id}``, ``POST /api/v1/subscriptions`` (customer and
  plan must exist: 404 ``customer_not_found`` / ``plan_not_found``; an active subscription with
  that ``external_id`` on the same plan is returned unchanged), ``PUT
  /api/v1/subscriptions/{external_id}`` (name). Uncertain: real Lago creates an unknown
  customer on subscription; the sync creates customers first, so it does not matter here.

Every accepted write is recorded in ``writes`` as ``(method, path)``.

Switches (``app.state``): ``down = True`` → 503 before anything is looked at;
``fail_next = [status, ...]`` → the next requests get those statuses (Lago-style bodies);
``delay`` seconds before answering. Records: ``refused`` (requests answered by a switch), ``stored`` (accepted events, in order),
``received`` (a Counter of every transaction id in every request Lago processed, accepted or
not), ``duplicates`` (events refused as already existing), ``batch_sizes``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
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

    app = Starlette(
        routes=[
            Route("/api/v1/events/batch", batch, methods=["POST"]),
            *_resource_routes(api_key, lock),
        ]
    )
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
    app.state.metrics = {}
    app.state.customers = {}
    app.state.plans = {}
    app.state.subscriptions = {}
    app.state.writes = []
    return app


# -- resources: billable metrics, customers, plans, subscriptions -----------------------------

_AGGREGATIONS = {
    "count_agg",
    "sum_agg",
    "max_agg",
    "unique_count_agg",
    "weighted_sum_agg",
    "latest_agg",
}
_INTERVALS = {"weekly", "monthly", "quarterly", "yearly"}
_CHARGE_MODELS = {"standard", "graduated", "package", "percentage", "volume"}
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _not_found(kind: str) -> Response:
    return _error(404, f"{kind}_not_found")


def _mandatory(obj: dict[str, Any], *names: str) -> dict[str, list[str]]:
    return {n: ["value_is_mandatory"] for n in names if _blank(obj.get(n))}


def _metric_errors(obj: dict[str, Any]) -> dict[str, list[str]]:
    errors = _mandatory(obj, "name", "code", "aggregation_type")
    agg = obj.get("aggregation_type")
    if agg is not None and agg not in _AGGREGATIONS:
        errors["aggregation_type"] = ["value_is_invalid"]
    if agg != "count_agg" and _blank(obj.get("field_name")):
        errors["field_name"] = ["value_is_mandatory"]
    return errors


def _charge_errors(charges: object, metrics: dict[str, Any]) -> dict[str, list[str]] | None:
    """None when a charge names a metric that does not exist (Lago answers 404)."""
    if not isinstance(charges, list):
        return {"charges": ["invalid_format"]}
    known = {m["lago_id"] for m in metrics.values()}
    errors: dict[str, list[str]] = {}
    for charge in charges:
        if not isinstance(charge, dict):
            return {"charges": ["invalid_format"]}
        if charge.get("billable_metric_id") not in known:
            return None
        if charge.get("charge_model") not in _CHARGE_MODELS:
            errors["charge_model"] = ["value_is_invalid"]
        props = charge.get("properties")
        if charge.get("charge_model") == "percentage":
            try:
                float(str((props or {}).get("rate")))
            except ValueError:
                errors["rate"] = ["invalid_rate"]
    return errors


def _plan_errors(obj: dict[str, Any]) -> dict[str, list[str]]:
    errors = _mandatory(obj, "name", "code", "interval", "amount_currency")
    if obj.get("interval") is not None and obj["interval"] not in _INTERVALS:
        errors["interval"] = ["value_is_invalid"]
    if not isinstance(obj.get("amount_cents"), int) or isinstance(obj["amount_cents"], bool):
        errors["amount_cents"] = ["value_is_invalid"]
    currency = obj.get("amount_currency")
    if currency is not None and not _CURRENCY.match(str(currency)):
        errors["amount_currency"] = ["value_is_invalid"]
    return errors


def _resource_routes(api_key: str, lock: threading.Lock) -> list[Route]:
    def stamp(obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        created = {"lago_id": f"lago_{uuid.uuid4().hex[:12]}", "created_at": "2026-01-01T00:00:00Z"}
        return {**(old or created), **obj}

    async def body_of(request: Request, key: str) -> dict[str, Any] | Response:
        if request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401)
        if request.method == "GET":
            return {}
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "bad_request")
        obj = body.get(key) if isinstance(body, dict) else None
        if not isinstance(obj, dict):
            return _error(400, "bad_request", {key: ["value_is_missing"]})
        return obj

    def wrote(request: Request, key: str, obj: dict[str, Any]) -> Response:
        request.app.state.writes.append((request.method, request.url.path))
        return _json(200, {key: obj})

    async def metrics(request: Request) -> Response:
        state = request.app.state
        got = await body_of(request, "billable_metric")
        if isinstance(got, Response):
            return got
        code = request.path_params.get("code")
        with lock:
            old = state.metrics.get(code) if code else None
            if request.method == "GET":
                return (
                    _json(200, {"billable_metric": old}) if old else _not_found("billable_metric")
                )
            if code and old is None:
                return _not_found("billable_metric")
            merged = {**(old or {}), **got}
            errors = _metric_errors(merged)
            new_code = merged.get("code")
            if new_code != code and new_code in state.metrics:
                errors["code"] = ["value_already_exist"]
            if errors:
                return _error(422, "validation_errors", errors)
            state.metrics.pop(code, None)
            state.metrics[new_code] = stamp(merged, old)
            return wrote(request, "billable_metric", state.metrics[new_code])

    async def customers(request: Request) -> Response:
        state = request.app.state
        got = await body_of(request, "customer")
        if isinstance(got, Response):
            return got
        with lock:
            if request.method == "GET":
                found = state.customers.get(request.path_params["external_id"])
                return _json(200, {"customer": found}) if found else _not_found("customer")
            errors = _mandatory(got, "external_id")
            if got.get("currency") is not None and not _CURRENCY.match(str(got["currency"])):
                errors["currency"] = ["value_is_invalid"]
            if errors:
                return _error(422, "validation_errors", errors)
            old = state.customers.get(got["external_id"])
            state.customers[got["external_id"]] = stamp({**(old or {}), **got}, old)
            return wrote(request, "customer", state.customers[got["external_id"]])

    async def plans(request: Request) -> Response:
        state = request.app.state
        got = await body_of(request, "plan")
        if isinstance(got, Response):
            return got
        code = request.path_params.get("code")
        with lock:
            old = state.plans.get(code) if code else None
            if request.method == "GET":
                return _json(200, {"plan": old}) if old else _not_found("plan")
            if code and old is None:
                return _not_found("plan")
            merged = {**(old or {}), **got}
            errors = _plan_errors(merged)
            charge_errors = _charge_errors(merged.get("charges", []), state.metrics)
            if charge_errors is None:
                return _not_found("billable_metric")
            errors.update(charge_errors)
            if merged.get("code") != code and merged.get("code") in state.plans:
                errors["code"] = ["value_already_exist"]
            if errors:
                return _error(422, "validation_errors", errors)
            merged["charges"] = [
                {"lago_id": f"lago_charge_{i}", **c} for i, c in enumerate(merged["charges"])
            ]
            state.plans.pop(code, None)
            state.plans[merged["code"]] = stamp(merged, old)
            return wrote(request, "plan", state.plans[merged["code"]])

    async def subscriptions(request: Request) -> Response:
        state = request.app.state
        got = await body_of(request, "subscription")
        if isinstance(got, Response):
            return got
        external_id = request.path_params.get("external_id")
        with lock:
            old = state.subscriptions.get(external_id) if external_id else None
            if request.method == "GET":
                return _json(200, {"subscription": old}) if old else _not_found("subscription")
            if request.method == "PUT":
                if old is None:
                    return _not_found("subscription")
                old.update({k: v for k, v in got.items() if k in ("name", "ending_at")})
                return wrote(request, "subscription", old)
            errors = _mandatory(got, "external_customer_id", "plan_code")
            if errors:
                return _error(422, "validation_errors", errors)
            if got["external_customer_id"] not in state.customers:
                return _not_found("customer")
            if got["plan_code"] not in state.plans:
                return _not_found("plan")
            ext = got.get("external_id") or f"sub_{uuid.uuid4().hex[:8]}"
            current = state.subscriptions.get(ext)
            if current is not None and current["plan_code"] == got["plan_code"]:
                return _json(200, {"subscription": current})
            state.subscriptions[ext] = stamp({**got, "external_id": ext, "status": "active"}, None)
            return wrote(request, "subscription", state.subscriptions[ext])

    return [
        Route("/api/v1/billable_metrics", metrics, methods=["POST"]),
        Route("/api/v1/billable_metrics/{code}", metrics, methods=["GET", "PUT"]),
        Route("/api/v1/customers", customers, methods=["POST"]),
        Route("/api/v1/customers/{external_id}", customers, methods=["GET"]),
        Route("/api/v1/plans", plans, methods=["POST"]),
        Route("/api/v1/plans/{code}", plans, methods=["GET", "PUT"]),
        Route("/api/v1/subscriptions", subscriptions, methods=["POST"]),
        Route("/api/v1/subscriptions/{external_id}", subscriptions, methods=["GET", "PUT"]),
    ]

"""`switchboard lago sync`: make Lago hold, for every tenant, what the usage export bills into.

Per run (idempotent: each object is read first and written only when it differs):

* one **billable metric**, code ``SWITCHBOARD_LAGO_METRIC_CODE``, ``sum_agg`` over the event
  property ``billed_amount``: the amount the tenant's plan bills, in the plan's currency. Summing
  the billed amount (not tokens) keeps prices, markups and fixed model prices in Switchboard's
  price book and plans, where they are versioned and reconciled; Lago only adds up and invoices;
* per tenant, a **customer** (``external_id`` = tenant id, the tenant's name, the plan currency);
* per tenant, a **plan** (code ``sb_<tenant id>``, monthly, no subscription fee) with one
  ``percentage`` charge of 100 % on the metric and ``free_units_per_total_aggregation`` = the
  plan's monthly allowance: Lago charges the month's billed amount above the allowance;
* per tenant, a **subscription** (``external_id`` = ``sb_<tenant id>``, what every exported
  event carries as ``external_subscription_id``) of that customer to that plan, calendar billing.

Lago's API: ``GET/POST/PUT /api/v1/billable_metrics[/{code}]``, ``GET/POST /api/v1/customers``
(POST creates or updates by ``external_id``), ``GET/POST/PUT /api/v1/plans[/{code}]``, and
``GET/POST /api/v1/subscriptions[/{external_id}]``; bodies are wrapped in the object's name
(``{"customer": {...}}``); unknown objects are 404, validation errors 422.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from switchboard.errors import UpstreamRejected, UpstreamUnavailable
from switchboard.metering.billing import PlanVersion
from switchboard.metering.lago import subscription_id
from switchboard.store.tenants import Tenant

METRIC_FIELD = "billed_amount"


@dataclass
class SyncReport:
    """What a sync changed in Lago: ``created`` and ``updated`` name ``kind:key``."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def view(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}


class LagoApi:
    """Lago's resource endpoints over one aiohttp session."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._base = base_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def aclose(self) -> None:
        await self._session.close()

    async def get(self, path: str, key: str) -> dict[str, Any] | None:
        """The object (unwrapped from ``key``), or None when Lago answers 404."""
        status, body = await self._call("GET", path, None)
        if status == 404:
            return None
        return _unwrap(status, body, key, "GET", path)

    async def write(self, method: str, path: str, key: str, obj: Mapping[str, Any]) -> None:
        status, body = await self._call(method, path, {key: dict(obj)})
        _unwrap(status, body, key, method, path)

    async def _call(
        self, method: str, path: str, payload: Mapping[str, Any] | None
    ) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method, self._base + path, json=payload, headers=self._headers
            ) as resp:
                text = await resp.text()
                try:
                    body = await resp.json(content_type=None) if text else None
                except ValueError:
                    body = text
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"Lago unreachable: {exc!r}") from exc


def _unwrap(status: int, body: Any, key: str, method: str, path: str) -> dict[str, Any]:
    if 200 <= status < 300 and isinstance(body, dict) and isinstance(body.get(key), dict):
        found: dict[str, Any] = body[key]
        return found
    if status >= 500 or status in (401, 403, 429):
        raise UpstreamUnavailable(f"Lago answered {status} to {method} {path}: {body}")
    raise UpstreamRejected(f"Lago refused {method} {path} ({status}): {body}")


# -- desired state ----------------------------------------------------------------------------


def desired_metric(code: str) -> dict[str, Any]:
    return {
        "name": "Switchboard billed usage",
        "code": code,
        "description": "Sum of the billed amount of each request (the tenant plan applied).",
        "aggregation_type": "sum_agg",
        "field_name": METRIC_FIELD,
        "recurring": False,
    }


def desired_customer(tenant: Tenant, plan: PlanVersion) -> dict[str, Any]:
    return {"external_id": tenant.id, "name": tenant.name, "currency": plan.terms.currency}


def desired_plan(tenant: Tenant, plan: PlanVersion, metric_id: str) -> dict[str, Any]:
    allowance = f"{plan.terms.included_allowance:.2f}"
    return {
        "name": f"Switchboard: {tenant.name}",
        "code": subscription_id(tenant.id),
        "interval": "monthly",
        "amount_cents": 0,
        "amount_currency": plan.terms.currency,
        "pay_in_advance": False,
        "charges": [
            {
                "billable_metric_id": metric_id,
                "charge_model": "percentage",
                "pay_in_advance": False,
                "invoiceable": True,
                "properties": {"rate": "100", "free_units_per_total_aggregation": allowance},
            }
        ],
    }


def desired_subscription(tenant: Tenant) -> dict[str, Any]:
    return {
        "external_customer_id": tenant.id,
        "plan_code": subscription_id(tenant.id),
        "external_id": subscription_id(tenant.id),
        "name": f"Switchboard usage: {tenant.name}",
        "billing_time": "calendar",
    }


def _differs(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """Whether any desired field differs from Lago's copy (fields Lago adds are ignored)."""
    return any(_field_differs(value, actual.get(name)) for name, value in desired.items())


def _field_differs(want: Any, have: Any) -> bool:
    if isinstance(want, Mapping):
        return not isinstance(have, Mapping) or _differs(want, have)
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return True
        return any(_field_differs(w, h) for w, h in zip(want, have, strict=True))
    if isinstance(want, str) and isinstance(have, int | float) and not isinstance(have, bool):
        try:
            return float(want) != float(have)
        except ValueError:
            return True
    return bool(want != have)


# -- the sync ---------------------------------------------------------------------------------


async def sync(
    api: LagoApi, metric_code: str, tenants: Sequence[tuple[Tenant, PlanVersion]]
) -> SyncReport:
    """Bring the metric and every tenant's customer, plan and subscription in line."""
    report = SyncReport()
    metric = await _upsert(
        api,
        report,
        key="billable_metric",
        path="/billable_metrics",
        code=metric_code,
        want=desired_metric(metric_code),
    )
    metric_id = str(metric.get("lago_id"))
    for tenant, plan in tenants:
        await _upsert_customer(api, report, tenant, plan)
        await _upsert(
            api,
            report,
            key="plan",
            path="/plans",
            code=subscription_id(tenant.id),
            want=desired_plan(tenant, plan, metric_id),
        )
        await _ensure_subscription(api, report, tenant)
    return report


async def _upsert(
    api: LagoApi, report: SyncReport, *, key: str, path: str, code: str, want: dict[str, Any]
) -> dict[str, Any]:
    have = await api.get(f"{path}/{code}", key)
    if have is None:
        await api.write("POST", path, key, want)
        report.created.append(f"{key}:{code}")
    elif _differs(want, have):
        await api.write("PUT", f"{path}/{code}", key, want)
        report.updated.append(f"{key}:{code}")
    else:
        report.unchanged += 1
        return have
    found = await api.get(f"{path}/{code}", key)
    if found is None:
        raise UpstreamRejected(f"Lago lost {key} {code} right after writing it")
    return found


async def _upsert_customer(
    api: LagoApi, report: SyncReport, tenant: Tenant, plan: PlanVersion
) -> None:
    want = desired_customer(tenant, plan)
    have = await api.get(f"/customers/{tenant.id}", "customer")
    if have is not None and not _differs(want, have):
        report.unchanged += 1
        return
    await api.write("POST", "/customers", "customer", want)  # Lago upserts by external_id
    (report.created if have is None else report.updated).append(f"customer:{tenant.id}")


async def _ensure_subscription(api: LagoApi, report: SyncReport, tenant: Tenant) -> None:
    want = desired_subscription(tenant)
    external_id = want["external_id"]
    have = await api.get(f"/subscriptions/{external_id}", "subscription")
    if have is not None and have.get("status") in ("active", "pending"):
        if have.get("plan_code") == want["plan_code"] and have.get("name") == want["name"]:
            report.unchanged += 1
            return
        await api.write(
            "PUT", f"/subscriptions/{external_id}", "subscription", {"name": want["name"]}
        )
        report.updated.append(f"subscription:{external_id}")
        return
    await api.write("POST", "/subscriptions", "subscription", want)
    report.created.append(f"subscription:{external_id}")

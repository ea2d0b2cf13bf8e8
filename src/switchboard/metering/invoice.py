"""Invoice preview: one tenant's billed usage of one calendar month (UTC), per model.

Each line item is a model (the name clients asked for) in one currency: requests, tokens in
and out, provider cost (USD), the billed amount, and the markup (billed amount minus the
provider cost converted at the plan's exchange rate). The monthly allowance of the plan in
force at the end of the month (now, for the current month) is taken off the subtotal in the
plan's currency. Rows billed in another currency (the plan's currency changed during the
month) are listed with their own subtotal and no allowance.

`render_html` prints it as one self-contained page (inline CSS, no scripts, no external
assets) labelled with the tenant's name; everything from the database is HTML-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

from switchboard.errors import InvalidRequest
from switchboard.metering.analytics import UsageQuery, UsageScope
from switchboard.metering.billing import PlanVersion
from switchboard.platform import Platform
from switchboard.store.analytics import AnalyticsRepository
from switchboard.store.database import utcnow
from switchboard.store.spend import month_bounds as spent_month_bounds
from switchboard.store.tenants import Tenant

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` → [first instant, first instant of the next month), in UTC."""
    match = _MONTH.match(month or "")
    if match is None or not 1 <= int(match[2]) <= 12:
        raise InvalidRequest("'month' must be YYYY-MM, e.g. 2026-11", param="month")
    return spent_month_bounds(month)


async def invoice_for(platform: Platform, tenant_ref: str, month: str) -> dict[str, Any]:
    """The invoice preview of a tenant (slug or id) for a month (``YYYY-MM``)."""
    start, end = month_bounds(month)
    tenant = await platform.tenants.get(tenant_ref)
    at = min(end - timedelta(microseconds=1), utcnow())
    plan = await platform.plans.at(tenant.id, at)
    query = UsageQuery(("model",), since=start, until=end, tenant_id=tenant.id)
    rows = await AnalyticsRepository(platform.db).summary(query, UsageScope(tenant_id=tenant.id))
    return build_invoice(tenant, month, plan, rows)


def _money(value: float) -> float:
    return round(value, 6)


def build_invoice(
    tenant: Tenant, month: str, plan: PlanVersion, by_model: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The invoice from the month's usage grouped by model and currency (analytics rows)."""
    terms = plan.terms
    lines = []
    subtotals: dict[str, float] = {}
    for row in by_model:
        currency = row["currency"]
        cost = float(row["cost_usd"])
        billed = float(row["billed_amount"])
        rate = terms.exchange_rate if currency == terms.currency else None
        lines.append(
            {
                "model": row["model"],
                "currency": currency,
                "requests": row["requests"],
                "tokens_input": row["tokens_input"],
                "tokens_output": row["tokens_output"],
                "provider_cost_usd": _money(cost),
                "markup": _money(billed - cost * rate) if rate is not None else None,
                "billed": _money(billed),
            }
        )
        subtotals[currency] = subtotals.get(currency, 0.0) + billed
    subtotal = subtotals.pop(terms.currency, 0.0)
    allowance = min(terms.included_allowance, subtotal)
    start, end = month_bounds(month)
    return {
        "tenant": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name},
        "month": month,
        "period": {"from": start.isoformat(), "until": end.isoformat()},
        "currency": terms.currency,
        "plan": plan.view(),
        "lines": lines,
        "subtotal": _money(subtotal),
        "allowance": _money(terms.included_allowance),
        "allowance_applied": _money(allowance),
        "total": _money(subtotal - allowance),
        "other_currencies": {c: _money(v) for c, v in sorted(subtotals.items())},
        "provider_cost_usd": _money(sum(float(r["cost_usd"]) for r in by_model)),
    }


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111;margin:2rem auto;
max-width:60rem;padding:0 1rem}
h1{font-size:1.5rem;margin:0}.muted{color:#555}
table{border-collapse:collapse;width:100%;margin:1.5rem 0}
th,td{padding:.4rem .6rem;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
tfoot td{font-weight:600;border-bottom:none}
.total td{border-top:2px solid #111;font-size:1.1rem}
@media print{body{margin:0}a{color:inherit}}
"""


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def render_html(invoice: dict[str, Any]) -> str:
    """The invoice as a printable, self-contained HTML page."""
    name = escape(invoice["tenant"]["name"])
    cur = escape(invoice["currency"])
    rows = "".join(
        "<tr>"
        f"<td>{escape(str(line['model']))}</td><td>{_num(line['requests'])}</td>"
        f"<td>{_num(line['tokens_input'])}</td><td>{_num(line['tokens_output'])}</td>"
        f"<td>{_num(line['provider_cost_usd'], 4)}</td><td>{_num(line['markup'], 4)}</td>"
        f"<td>{_num(line['billed'], 4)} {escape(line['currency'])}</td>"
        "</tr>"
        for line in invoice["lines"]
    )
    if not rows:
        rows = '<tr><td colspan="7" class="muted">No usage this month.</td></tr>'
    others = "".join(
        f'<tr><td colspan="6">Billed in {escape(c)}</td><td>{_num(v, 4)} {escape(c)}</td></tr>'
        for c, v in invoice["other_currencies"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} &middot; usage {escape(invoice["month"])}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{name}</h1>
<p class="muted">Usage statement for {escape(invoice["month"])} (UTC) &middot; preview,
not a tax invoice &middot; amounts in {cur}</p></header>
<table>
<thead><tr><th>Model</th><th>Requests</th><th>Tokens in</th><th>Tokens out</th>
<th>Provider cost (USD)</th><th>Markup</th><th>Amount</th></tr></thead>
<tbody>{rows}</tbody>
<tfoot>
<tr><td colspan="6">Subtotal</td><td>{_num(invoice["subtotal"])} {cur}</td></tr>
<tr><td colspan="6">Included allowance</td>
<td>&minus;{_num(invoice["allowance_applied"])} {cur}</td></tr>
<tr class="total"><td colspan="6">Total</td><td>{_num(invoice["total"])} {cur}</td></tr>
{others}
</tfoot></table>
</body></html>
"""

"""Usage analytics: what to group by, what to filter on, who may see what, and the output.

A report groups the ledger by any of `DIMENSIONS` and gives, per group and currency:
requests, errors and the error rate (status >= 400), tokens in and out, provider cost (USD),
billed amount (in the group's currency), and latency p50/p95 (milliseconds, interpolated
like PostgreSQL's ``percentile_cont``). The SQL lives in `switchboard.store.analytics`.

Scope: `UsageScope` is what a caller may see, and `scope_for` derives it from the RBAC layer's
scope of the caller's `Principal` (platform admin: everything; tenant admin: the tenant;
department admin: the requests of keys owned by the department's users; user: those of their
own keys). The admin API applies exactly that one function.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from switchboard.auth.rbac import scope_of
from switchboard.auth.roles import Principal
from switchboard.errors import InvalidRequest

# name → what it groups by (the column label in the output)
DIMENSIONS = ("tenant", "department", "user", "key", "model", "provider", "day", "hour")
METRICS = (
    "requests",
    "errors",
    "error_rate",
    "tokens_input",
    "tokens_output",
    "cost_usd",
    "billed_amount",
    "latency_p50_ms",
    "latency_p95_ms",
)


@dataclass(frozen=True, slots=True)
class UsageScope:
    """The part of the ledger a caller may see; None fields do not restrict."""

    tenant_id: str | None = None
    department_id: str | None = None
    key_owner_id: str | None = None

    @property
    def everything(self) -> bool:
        return self.tenant_id is None


def scope_for(principal: Principal) -> UsageScope:
    """The RBAC scope of the caller (`switchboard.auth.rbac.scope_of`) as a ledger filter."""
    scope = scope_of(principal)
    return UsageScope(
        tenant_id=scope.tenant_id,
        department_id=scope.department_id,
        key_owner_id=scope.user_id,
    )


@dataclass(frozen=True, slots=True)
class UsageQuery:
    group_by: tuple[str, ...] = ("tenant",)
    since: datetime | None = None
    until: datetime | None = None
    tenant_id: str | None = None
    model: str | None = None


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``tenant,model,day`` → the dimensions, checked; empty: one total row."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise InvalidRequest(
            f"cannot group by {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}",
            param="group_by",
        )
    return names


def columns(query: UsageQuery) -> list[str]:
    return [*query.group_by, "currency", *METRICS]


def as_json(query: UsageQuery, rows: Sequence[dict[str, Any]]) -> bytes:
    return orjson.dumps({"group_by": list(query.group_by), "data": list(rows)})


def as_csv(query: UsageQuery, rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = columns(query)
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in names])
    return out.getvalue()


def as_table(query: UsageQuery, rows: Sequence[dict[str, Any]]) -> str:
    names = columns(query)

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
        return str(value)

    cells = [[cell(r.get(c)) for c in names] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(names)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(names, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)

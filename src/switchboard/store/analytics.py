"""Analytics over the usage ledger, in SQL on both databases.

Latency percentiles are ``percentile_cont`` on PostgreSQL. SQLite has no such aggregate, so the
same definition is computed with window functions: per group, the rows ranked by latency
(``ROW_NUMBER``) and counted; percentile p sits at position ``1 + p*(n - 1)``, between the
rows at its floor and ceiling, and is interpolated linearly between their latencies, which is
exactly what ``percentile_cont`` does.

(A colon in a literal is written ``\\:`` so that `text` does not read it as a parameter.)
Only fixed SQL fragments chosen from the whitelists below go into the statement text; every
value is a bound parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from switchboard.metering.analytics import UsageQuery, UsageScope
from switchboard.store.database import Database

_PERCENTILES = (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95))

_COMMON = {
    "tenant": "e.tenant_id",
    "department": "u.department_id",
    "user": "e.user_id",
    "key": "e.key_id",
    "model": "e.model",
    "provider": "e.provider",
}
_TIME = {
    "postgresql": {
        "day": "to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "hour": "to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\\:00')",
    },
    "sqlite": {  # stored as naive UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'
        "day": "substr(e.created_at, 1, 10)",
        "hour": "substr(e.created_at, 1, 10) || 'T' || substr(e.created_at, 12, 2) || '\\:00'",
    },
}


def _sums(p: str) -> str:
    """The summed metrics, over columns prefixed with ``p`` (a table alias and dot, or '')."""
    return (
        "COUNT(*) AS requests, "
        f"SUM(CASE WHEN {p}status >= 400 THEN 1 ELSE 0 END) AS errors, "
        f"SUM({p}tokens_input) AS tokens_input, SUM({p}tokens_output) AS tokens_output, "
        f"SUM({p}cost_usd) AS cost_usd, SUM({p}billed_amount) AS billed_amount"
    )


class AnalyticsRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def summary(self, query: UsageQuery, scope: UsageScope) -> list[dict[str, Any]]:
        """One row per group and currency, ordered by the groups."""
        dialect = self._db.dialect
        exprs = {**_COMMON, **_TIME["postgresql" if dialect == "postgresql" else "sqlite"]}
        dims = [exprs[d] for d in query.group_by]
        where, params = self._where(query, scope)
        joins = ""
        if "department" in query.group_by or scope.department_id or scope.key_owner_id:
            joins = (
                " LEFT JOIN api_keys k ON k.id = e.key_id"
                " LEFT JOIN users u ON u.id = k.user_id AND u.tenant_id = e.tenant_id"
            )
        source = f"usage_events e{joins} WHERE {where}"
        sql = _postgres(dims, source) if dialect == "postgresql" else _sqlite(dims, source)
        # A scoped report runs in the tenant's row-level security scope, which enforces it again.
        async with self._db.reading(scope.tenant_id) as conn:
            rows = (await conn.execute(text(sql), params)).mappings().all()
        return [_finish(query, row) for row in rows]

    def _where(self, query: UsageQuery, scope: UsageScope) -> tuple[str, dict[str, Any]]:
        clauses = ["1 = 1"]
        params: dict[str, Any] = {}

        def add(clause: str, name: str, value: Any) -> None:
            clauses.append(clause)
            params[name] = value

        if query.since is not None:
            add("e.created_at >= :since", "since", self._time(query.since))
        if query.until is not None:
            add("e.created_at < :until", "until", self._time(query.until))
        if query.tenant_id is not None:
            add("e.tenant_id = :tenant", "tenant", query.tenant_id)
        if query.model is not None:
            add("e.model = :model", "model", query.model)
        if scope.tenant_id is not None:
            add("e.tenant_id = :scope_tenant", "scope_tenant", scope.tenant_id)
        if scope.department_id is not None:
            add("u.department_id = :scope_department", "scope_department", scope.department_id)
        if scope.key_owner_id is not None:
            add("k.user_id = :scope_owner", "scope_owner", scope.key_owner_id)
        return " AND ".join(clauses), params

    def _time(self, value: datetime) -> Any:
        utc = value.astimezone(UTC)
        if self._db.dialect == "postgresql":
            return utc
        return utc.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _labels(dims: list[str]) -> list[str]:
    return [f"d{i}" for i in range(len(dims))]


def _postgres(dims: list[str], source: str) -> str:
    select = [f"{expr} AS d{i}" for i, expr in enumerate(dims)]
    order = ", ".join([*(str(i + 1) for i in range(len(dims))), str(len(dims) + 1)])
    pcts = ", ".join(
        f"percentile_cont({p}) WITHIN GROUP (ORDER BY e.latency_ms) AS {name}"
        for name, p in _PERCENTILES
    )
    return (
        f"SELECT {', '.join([*select, 'e.currency AS currency'])}, {_sums('e.')}, {pcts} "  # noqa: S608
        f"FROM {source} GROUP BY {order} ORDER BY {order}"
    )


def _sqlite(dims: list[str], source: str) -> str:
    labels = _labels(dims)
    partition = ", ".join([*labels, "currency"])
    base = ", ".join(
        [
            *(f"{expr} AS {label}" for expr, label in zip(dims, labels, strict=True)),
            "e.currency AS currency",
            "e.status AS status",
            "e.tokens_input AS tokens_input",
            "e.tokens_output AS tokens_output",
            "e.cost_usd AS cost_usd",
            "e.billed_amount AS billed_amount",
            "e.latency_ms AS latency_ms",
        ]
    )
    order_stats = []
    for name, p in _PERCENTILES:
        pos = f"({p} * (cnt - 1))"
        floor = f"CAST({pos} AS INTEGER)"
        order_stats += [
            f"MAX(CASE WHEN rn = 1 + {floor} THEN latency_ms END) AS {name}_lo",
            f"MAX(CASE WHEN rn = MIN(cnt, 2 + {floor}) THEN latency_ms END) AS {name}_hi",
            f"MAX({pos} - {floor}) AS {name}_frac",
        ]
    return (
        f"WITH base AS (SELECT {base} FROM {source}), "  # noqa: S608
        "ranked AS (SELECT base.*, "
        f"ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY latency_ms) AS rn, "
        f"COUNT(*) OVER (PARTITION BY {partition}) AS cnt FROM base) "
        f"SELECT {partition}, {_sums('')}, {', '.join(order_stats)} "
        f"FROM ranked GROUP BY {partition} ORDER BY {partition}"
    )


def _finish(query: UsageQuery, row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {name: row[f"d{i}"] for i, name in enumerate(query.group_by)}
    requests = int(row["requests"])
    errors = int(row["errors"] or 0)
    out.update(
        currency=row["currency"],
        requests=requests,
        errors=errors,
        error_rate=round(errors / requests, 6) if requests else 0.0,
        tokens_input=int(row["tokens_input"] or 0),
        tokens_output=int(row["tokens_output"] or 0),
        cost_usd=float(row["cost_usd"] or 0.0),
        billed_amount=float(row["billed_amount"] or 0.0),
    )
    for name, _p in _PERCENTILES:
        if name in row:
            value = row[name]
        else:
            lo, hi, frac = row[f"{name}_lo"], row[f"{name}_hi"], row[f"{name}_frac"]
            value = None if lo is None else lo + float(frac) * ((hi if hi is not None else lo) - lo)
        out[name] = None if value is None else round(float(value), 3)
    return out

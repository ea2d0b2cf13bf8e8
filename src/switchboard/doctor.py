"""`switchboard doctor`: is the config valid, the database reachable and current, every
provider reachable, every routed model known upstream and priced? Each finding says what to fix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from switchboard.config import GatewayConfig, ProviderConfig
from switchboard.errors import SwitchboardError
from switchboard.metering.prices import PriceTable
from switchboard.providers import build_provider
from switchboard.settings import Settings
from switchboard.store import Database

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""


async def diagnose(
    config: GatewayConfig | None,
    config_error: str | None,
    db: Database,
    *,
    probe_seconds: float = 5.0,
) -> list[Finding]:
    findings: list[Finding] = []
    if config is None:
        findings.append(
            Finding("config", "fail", config_error or "no config", "fix the field on that line")
        )
    else:
        findings.append(
            Finding(
                "config",
                "ok",
                f"{config.source}: {len(config.providers)} providers, {len(config.models)} models",
            )
        )
    findings.append(await _database(db))
    if config is not None:
        results = await asyncio.gather(
            *(_provider(p, config, probe_seconds) for p in config.providers)
        )
        for group in results:
            findings.extend(group)
        findings.extend(_prices(config))
    return findings


def breaker_findings(deployments: list[dict[str, Any]]) -> list[Finding]:
    """Open or probing circuit breakers, from a running gateway's routing state."""
    findings = []
    for d in deployments:
        if d["breaker"] == "closed":
            continue
        findings.append(
            Finding(
                f"breaker {d['provider']}/{d['deployment']}",
                "warn",
                f"{d['breaker']} after {d['consecutive_failures']} consecutive failures "
                f"(model {d['model']}); next probe in {d['open_for_seconds']} s",
                f"check provider {d['provider']}; traffic goes to other deployments meanwhile",
            )
        )
    if deployments and not findings:
        findings.append(Finding("breakers", "ok", f"all {len(deployments)} deployments closed"))
    return findings


async def live_findings(url: str, admin_key: str | None) -> list[Finding]:
    """Breaker state lives in the running gateway; ask it over the admin API."""
    if admin_key is None:
        return [
            Finding(
                "breakers",
                "ok",
                "not checked",
                "set SWITCHBOARD_ADMIN_KEY to read them from the server",
            )
        ]
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"Authorization": f"Bearer {admin_key}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{url}/admin/v1/routing", headers=headers) as resp,
        ):
            if resp.status != 200:
                detail = f"{url} answered {resp.status}"
                return [Finding("breakers", "warn", detail, "check SWITCHBOARD_ADMIN_KEY")]
            data = await resp.json()
    except (aiohttp.ClientError, TimeoutError):
        return [Finding("breakers", "ok", f"no gateway running at {url}; nothing to check")]
    return breaker_findings(data["data"])


def shared_state(settings: Settings) -> Finding:
    """Several workers without Redis: each keeps its own rate limits, concurrency slots,
    budget counters and sign-in throttle, so a tenant gets up to that many times what its
    policy allows."""
    workers = settings.workers
    if workers == 1 or settings.limits_url:
        where = "in Redis" if settings.limits_url else "in the one worker"
        return Finding("shared state", "ok", f"limits and budgets are counted {where}")
    return Finding(
        "shared state",
        "warn",
        f"{workers} workers count rate limits, concurrency, budgets and failed sign-ins each "
        f"on their own: a tenant can get up to {workers} times its limits and spend up to "
        f"{workers} times its budget",
        "set SWITCHBOARD_LIMITS_URL to a Redis (e.g. redis://127.0.0.1:6379/0), or run one worker",
    )


async def _database(db: Database) -> Finding:
    try:
        await db.ping()
        current = await db.is_current()
    except Exception as exc:  # any driver error means the same thing to the operator
        return Finding(
            "database",
            "fail",
            f"{db.redacted_url()}: {type(exc).__name__}: {exc}",
            "check SWITCHBOARD_DATABASE_URL and that the database server is running",
        )
    if not current:
        return Finding(
            "database",
            "warn",
            f"{db.redacted_url()}: schema is behind",
            "run `switchboard migrate`",
        )
    return Finding("database", "ok", f"{db.redacted_url()}: reachable, schema current")


async def _provider(
    pconf: ProviderConfig, config: GatewayConfig, probe_seconds: float
) -> list[Finding]:
    name = f"provider {pconf.name}"
    provider = build_provider(pconf)
    try:
        models = await asyncio.wait_for(provider.list_models(), probe_seconds)
    except (SwitchboardError, TimeoutError) as exc:
        detail = exc.message if isinstance(exc, SwitchboardError) else "no answer in time"
        return [
            Finding(
                name,
                "fail",
                f"{pconf.base_url}: {detail}",
                f"start the {pconf.kind} server at {pconf.base_url}, or fix base_url/api_key",
            )
        ]
    finally:
        await provider.aclose()
    findings = [Finding(name, "ok", f"{pconf.base_url}: reachable, {len(models)} models listed")]
    listed = set(models)
    missing = [
        (model.name, d.model)
        for model in config.models
        for d in model.deployments
        if d.provider == pconf.name and listed and d.model not in listed
    ]
    findings.extend(
        Finding(
            f"model {name}",
            "warn",
            f"{pconf.name} does not list {upstream!r}",
            "pull or deploy that model upstream, or fix the deployment's model",
        )
        for name, upstream in missing
    )
    return findings


def _prices(config: GatewayConfig) -> list[Finding]:
    table = PriceTable(config.prices)
    localities = {p.name: p.locality for p in config.providers}
    findings = []
    for model in config.models:
        for deployment in model.deployments:
            price = table.resolve(
                deployment.model,
                locality=localities[deployment.provider],
                configured=deployment.price,
            )
            if price is None:
                findings.append(
                    Finding(
                        f"model {model.name}",
                        "warn",
                        f"no price known for {deployment.model!r}: its requests cost 0",
                        "add `price:` to the deployment or an entry under `prices:`",
                    )
                )
    return findings

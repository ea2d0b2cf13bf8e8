"""`switchboard key policy show|set KEY_ID`: one API key's limits, budget and allowed models,
and `switchboard budget --tenant SLUG`: this month's spend against the budgets."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError

from switchboard.platform import Platform
from switchboard.policy.limit_set import KeyPolicy

policy_app = typer.Typer(
    help="Show or set an API key's own limits, monthly budget and allowed models.",
    no_args_is_help=True,
)


def _run(fn: Any) -> Any:
    from switchboard.cli_support import with_platform

    return with_platform(fn)


@policy_app.command("show")
def policy_show(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    from switchboard.cli_support import print_json as _print_json

    async def show(p: Platform) -> dict[str, Any]:
        key = await p.keys.get(key_id)
        policy = await p.key_policies.get(key.tenant_id, key.id)
        return {"key_id": key.id, **policy.model_dump()}

    _print_json(_run(show))


@policy_app.command("set")
def policy_set(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    *,
    rpm: Annotated[int | None, typer.Option("--rpm", help="Requests per minute.")] = None,
    rph: Annotated[int | None, typer.Option("--rph", help="Requests per hour.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", help="Tokens per minute.")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Requests in flight at once.")
    ] = None,
    budget: Annotated[float | None, typer.Option("--budget", help="Monthly budget in USD.")] = None,
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated allowed model names.")
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Start from no limits instead of the current ones.")
    ] = False,
) -> None:
    """Change the given fields of a key's policy (the others stay, unless --clear)."""
    from switchboard.cli_support import fail as _fail
    from switchboard.cli_support import print_json as _print_json

    changes: dict[str, Any] = {
        "rate_limit_per_minute": rpm,
        "rate_limit_per_hour": rph,
        "tokens_per_minute": tpm,
        "max_concurrent_requests": concurrency,
        "monthly_budget_usd": budget,
        "allowed_models": [m.strip() for m in models.split(",") if m.strip()] if models else None,
    }

    async def update(p: Platform) -> dict[str, Any]:
        key = await p.keys.get(key_id)
        current = {} if clear else (await p.key_policies.get(key.tenant_id, key.id)).model_dump()
        merged = {**current, **{k: v for k, v in changes.items() if v is not None}}
        policy = KeyPolicy.model_validate(merged)
        await p.key_policies.put(key.tenant_id, key.id, policy)
        return {"key_id": key.id, **policy.model_dump()}

    try:
        result = _run(update)
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        return
    typer.echo(
        "updated; running gateways apply it within SWITCHBOARD_KEY_CACHE_TTL_SECONDS", err=True
    )
    _print_json(result)

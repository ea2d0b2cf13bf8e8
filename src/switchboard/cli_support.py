"""What every `switchboard` subcommand module shares: settings, the platform, errors, JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from switchboard.auth.audit import Auditor
from switchboard.auth.roles import CLI
from switchboard.errors import SwitchboardError
from switchboard.platform import Platform, open_platform
from switchboard.settings import Settings

T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings(config: Path | None = None) -> Settings:
    if config is not None:
        return Settings(config=config.resolve())
    return Settings()


def with_platform(fn: Callable[[Platform], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_platform(settings()) as platform:
            return await fn(platform)

    try:
        return asyncio.run(run())
    except SwitchboardError as exc:
        fail(exc.message)
        raise  # unreachable: fail exits


def print_json(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


async def audit(
    p: Platform, action: str, *, tenant_id: str | None, target: str | None, **details: Any
) -> None:
    """One audit row for a change made from this command line (actor kind ``cli``)."""
    await Auditor(p.audit).record(CLI, action, tenant_id=tenant_id, target=target, details=details)

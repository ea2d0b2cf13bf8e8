"""`switchboard department`, `switchboard user` and `switchboard audit`.

Passwords are read from stdin (``--password-stdin``) or a hidden prompt, never from the command
line, where they would land in shell history and the process list. A user's sessions are
listed and ended through the same repository calls as /admin/v1/users/{user_id}/sessions; the
servers' workers stop trusting ended sessions within SWITCHBOARD_SESSION_CHECK_TTL_SECONDS.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Annotated, Any

import typer

from switchboard.auth.passwords import check_password, hash_password
from switchboard.auth.roles import ROLES, check_role
from switchboard.auth.sessions import ENDED_BY_ADMIN, session_view
from switchboard.cli_support import JsonFlag, audit, fail, print_json, settings, with_platform
from switchboard.errors import NotFound, SwitchboardError
from switchboard.metering import report
from switchboard.platform import Platform
from switchboard.store.audit import AuditEntry, AuditFilter
from switchboard.store.departments import Department
from switchboard.store.sessions import Session
from switchboard.store.users import User
from switchboard.views import plain

department_app = typer.Typer(help="Create and list a tenant's departments.", no_args_is_help=True)
user_app = typer.Typer(
    help="Create and list people who sign in (platform admins and tenant users), and their "
    "sessions.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option("--tenant", help="Tenant slug.")]
UserTenantOption = Annotated[
    str | None, typer.Option("--tenant", help="Tenant slug (leave out: platform admins).")
]


@department_app.command("create")
def department_create(name: str, tenant: TenantOption) -> None:
    """Create a department in a tenant."""

    async def create(p: Platform) -> Department:
        owner = await p.tenants.get(tenant)
        department = await p.departments.create(owner.id, name)
        await audit(p, "department.create", tenant_id=owner.id, target=department.id, name=name)
        return department

    department = with_platform(create)
    typer.echo(f"created department {department.name} ({department.id})", err=True)


@department_app.command("list")
def department_list(tenant: TenantOption, as_json: JsonFlag = False) -> None:
    """List a tenant's departments."""

    async def listing(p: Platform) -> list[Department]:
        return await p.departments.list((await p.tenants.get(tenant)).id)

    departments = with_platform(listing)
    if as_json:
        print_json([plain(d) for d in departments])
        return
    for d in departments:
        typer.echo(f"{d.id:<22} {d.name}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        return check_password(password)
    except SwitchboardError as exc:
        fail(exc.message)
        raise


@user_app.command("create")
def user_create(
    email: str,
    *,
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}.")] = "user",
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Tenant slug (leave out for a platform admin).")
    ] = None,
    department: Annotated[
        str | None, typer.Option(help="Department name (created when missing).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    no_password: Annotated[
        bool,
        typer.Option("--no-password", help="No password: the user signs in by LDAP or OIDC."),
    ] = False,
) -> None:
    """Create a user. The password comes from a hidden prompt or stdin, never an argument."""
    try:
        checked = check_role(role)
    except SwitchboardError as exc:
        fail(exc.message)
        raise
    if (checked == "platform_admin") != (tenant is None):
        fail("a platform admin takes no --tenant; every other role needs one")
    password = None if no_password else _read_password(password_stdin)

    async def create(p: Platform) -> User:
        tenant_id = (await p.tenants.get(tenant)).id if tenant else None
        department_id = None
        if department:
            if tenant_id is None:
                fail("a platform admin has no department")
            assert tenant_id is not None
            department_id = (await p.departments.ensure(tenant_id, department)).id
        user = await p.users.create(
            tenant_id,
            email,
            role=checked,
            name=name,
            department_id=department_id,
            password_hash=await hash_password(password) if password else None,
        )
        await audit(
            p,
            "user.create",
            tenant_id=tenant_id,
            target=user.id,
            email=user.email,
            role=checked,
            department_id=department_id,
        )
        return user

    user = with_platform(create)
    typer.echo(f"created {user.role} {user.email} ({user.id})", err=True)


@user_app.command("list")
def user_list(tenant: UserTenantOption = None, as_json: JsonFlag = False) -> None:
    """List a tenant's users, or the platform admins."""

    async def listing(p: Platform) -> list[User]:
        return await p.users.list((await p.tenants.get(tenant)).id if tenant else None)

    users = with_platform(listing)
    if as_json:
        print_json([plain(u) for u in users])
        return
    for u in users:
        state = "disabled" if u.disabled else u.source
        typer.echo(f"{u.id:<22} {u.role:<17} {state:<8} {u.email}")


async def _user(p: Platform, tenant: str | None, email: str) -> User:
    """A tenant's user (or a platform admin, without a tenant) by e-mail."""
    tenant_id = (await p.tenants.get(tenant)).id if tenant else None
    user = await p.users.find_by_email(tenant_id, email)
    if user is None:
        raise NotFound(f"no user {email!r}" + (f" in tenant {tenant!r}" if tenant else ""))
    return user


@user_app.command("sessions")
def user_sessions(email: str, tenant: UserTenantOption = None, as_json: JsonFlag = False) -> None:
    """List a user's live sign-in sessions, most recently used first (never a token)."""
    idle = timedelta(seconds=settings().session_idle_timeout_seconds)

    async def listing(p: Platform) -> list[Session]:
        user = await _user(p, tenant, email)
        return await p.sessions.live(user.tenant_id, user.id, idle=idle)

    found = with_platform(listing)
    if as_json:
        print_json([session_view(s) for s in found])
        return
    for s in found:
        used = s.last_used_at.isoformat(timespec="seconds")
        typer.echo(
            f"{s.id:<28} {s.method or '-':<8} {used} {s.client_ip or '-':<15} {s.user_agent or '-'}"
        )


@user_app.command("end-sessions")
def user_end_sessions(email: str, tenant: UserTenantOption = None) -> None:
    """End every sign-in session of a user; they stay enabled and may sign in again."""

    async def end(p: Platform) -> tuple[User, list[str]]:
        user = await _user(p, tenant, email)
        ended = await p.sessions.revoke_user(user.id, ENDED_BY_ADMIN, tenant_id=user.tenant_id)
        await audit(
            p,
            "user.session.revoke_all",
            tenant_id=user.tenant_id,
            target=user.id,
            email=user.email,
            sessions=len(ended),
        )
        return user, ended

    user, ended = with_platform(end)
    typer.echo(f"ended {len(ended)} session(s) of {user.email}", err=True)


def audit_command(
    *,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor (user id, e-mail).")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, or a prefix ending in '.'.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="From this date/time on.")] = None,
    until: Annotated[str | None, typer.Option(help="Before this date/time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Most rows.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """The audit log, newest first: who did what, when, from where."""

    async def query(p: Platform) -> list[AuditEntry]:
        tenant_id = (await p.tenants.get(tenant)).id if tenant else None
        return await p.audit.query(
            AuditFilter(
                tenant_id=tenant_id,
                actor_id=actor,
                action=action,
                since=report.parse_since(since),
                until=report.parse_since(until),
                limit=limit,
            )
        )

    entries = with_platform(query)
    if as_json:
        print_json([plain(e) for e in entries])
        return
    for e in entries:
        typer.echo(_line(e))


def _line(e: AuditEntry) -> str:
    who = f"{e.actor_kind}:{e.actor_id or '-'}"
    where = e.client_ip or "-"
    details: dict[str, Any] = e.details
    extra = " ".join(f"{k}={v}" for k, v in details.items() if k != "path")
    return (
        f"{e.at.isoformat(timespec='seconds')} {e.outcome:<9} {e.action:<22} {who:<30} "
        f"{e.target or '-':<24} {where:<15} {extra}"
    )

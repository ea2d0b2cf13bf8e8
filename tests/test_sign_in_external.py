"""`SessionService.sign_in_external`, the door the LDAP and OIDC logins go through, and the
session checks behind access tokens, in process on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest

from switchboard.auth.audit import Auditor, ClientInfo
from switchboard.auth.external import ExternalIdentity
from switchboard.auth.sessions import SessionService
from switchboard.auth.throttle import LoginAllowance, MemoryLoginThrottle
from switchboard.auth.tokens import AccessTokens
from switchboard.errors import AuthenticationFailed, PermissionDenied
from switchboard.platform import Platform
from switchboard.store.audit import AuditFilter
from switchboard.store.tenants import Tenant

CLIENT = ClientInfo(ip="127.0.0.1", user_agent="pytest")
SECRET = secrets.token_bytes(32)  # shared by every worker of one deployment


def service(
    platform: Platform, *, check_ttl: float = 60.0, secret: bytes = SECRET
) -> SessionService:
    return SessionService(
        platform,
        AccessTokens(secret, ttl_seconds=300),
        Auditor(platform.audit),
        MemoryLoginThrottle(LoginAllowance(per_address=3, per_account=15, window_seconds=60)),
        idle_timeout=timedelta(hours=1),
        max_age=timedelta(hours=8),
        check_ttl=check_ttl,
    )


async def tenant(platform: Platform) -> Tenant:
    return await platform.tenants.create(f"ext-{secrets.token_hex(4)}", usage_mode="hybrid")


def identity(email: str, subject: str = "", source: str = "oidc") -> ExternalIdentity:
    return ExternalIdentity(
        source=source,  # type: ignore[arg-type]
        subject=subject or f"https://idp.example|{secrets.token_hex(4)}",
        email=email,
        name="Ann Example",
        groups=("staff",),
    )


async def test_first_sign_in_provisions_the_user(platform: Platform) -> None:
    sessions, t = service(platform), await tenant(platform)
    who = identity("Ann@Example.com")
    pair = await sessions.sign_in_external(t.slug, who, "user", "Research", client=CLIENT)
    user = pair.user
    assert (user.email, user.source, user.external_subject) == (
        "ann@example.com",
        "oidc",
        who.subject,
    )
    department = await platform.departments.find_by_name(t.id, "Research")
    assert department is not None
    assert user.department_id == department.id
    principal = await sessions.authenticate(pair.access_token)
    assert (principal.user_id, principal.role, principal.tenant_id) == (user.id, "user", t.id)
    logins = await platform.audit.query(AuditFilter(tenant_id=t.id, action="auth.login"))
    assert [(e.outcome, e.details["method"], e.client_ip) for e in logins] == [
        ("ok", "oidc", "127.0.0.1")
    ]


async def test_later_sign_ins_follow_the_provider(platform: Platform) -> None:
    sessions, t = service(platform), await tenant(platform)
    who = identity("bob@example.com", source="ldap", subject="uid=bob,ou=people,dc=example")
    first = await sessions.sign_in_external(t.id, who, "user", None)
    second = await sessions.sign_in_external(t.id, who, "department_admin", "Sales")
    assert second.user.id == first.user.id
    assert second.user.role == "department_admin"
    assert second.user.department_id is not None
    assert len(await platform.users.list(t.id)) == 1


async def test_an_email_held_by_another_account_is_not_taken_over(platform: Platform) -> None:
    sessions, t = service(platform), await tenant(platform)
    await platform.users.create(t.id, "carol@example.com", role="tenant_admin")
    with pytest.raises(PermissionDenied) as refused:
        await sessions.sign_in_external(t.slug, identity("carol@example.com"), "user", None)
    assert refused.value.code == "account_conflict"
    failed = await platform.audit.query(AuditFilter(tenant_id=t.id, action="auth.login"))
    assert [e.outcome for e in failed] == ["failed"]


async def test_external_sign_in_refuses_platform_admins_and_disabled_users(
    platform: Platform,
) -> None:
    sessions, t = service(platform), await tenant(platform)
    with pytest.raises(PermissionDenied):
        await sessions.sign_in_external(t.slug, identity("d@example.com"), "platform_admin", None)
    who = identity("e@example.com")
    pair = await sessions.sign_in_external(t.slug, who, "user", None)
    await platform.users.update(t.id, pair.user.id, disabled=True)
    with pytest.raises(AuthenticationFailed):
        await sessions.sign_in_external(t.slug, who, "user", None)


async def test_revocation_reaches_a_cached_session(platform: Platform) -> None:
    """A session cached as alive stays usable until check_ttl on other workers, but the
    worker that revoked it refuses it at once."""
    t = await tenant(platform)
    worker_a, worker_b = service(platform), service(platform, check_ttl=0)
    pair = await worker_a.sign_in_external(t.slug, identity("f@example.com"), "user", None)
    principal = await worker_a.authenticate(pair.access_token)
    assert principal.session_id == pair.session_id
    await worker_a.end_user_sessions(pair.user.id, "disabled", tenant_id=t.id)
    with pytest.raises(AuthenticationFailed) as refused:
        await worker_a.authenticate(pair.access_token)
    assert refused.value.code == "session_revoked"
    with pytest.raises(AuthenticationFailed) as elsewhere:
        await worker_b.authenticate(pair.access_token)  # another worker, TTL 0
    assert elsewhere.value.code == "session_revoked"
    live = await worker_a.sign_in_external(t.slug, identity("g@example.com"), "user", None)
    assert (await worker_b.authenticate(live.access_token)).user_id == live.user.id
    with pytest.raises(AuthenticationFailed) as foreign:  # another deployment's key
        await service(platform, secret=secrets.token_bytes(32)).authenticate(live.access_token)
    assert foreign.value.code == "invalid_token"

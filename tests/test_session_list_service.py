"""A person's session list in process, on SQLite and PostgreSQL: which sessions count as live,
ending one or all of them (in the user's tenant scope), and how fast an ended session's access
tokens stop working on the worker that ended it and on the others."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from switchboard.auth.sessions import ENDED_BY_ADMIN, SessionService, session_view
from switchboard.errors import AuthenticationFailed, NotFound
from switchboard.platform import Platform
from switchboard.store.audit import AuditFilter
from switchboard.store.database import utcnow
from switchboard.store.schema import sessions
from switchboard.store.sessions import Session
from switchboard.store.tenants import Tenant
from switchboard.store.users import User
from test_sign_in_external import CLIENT, identity, service

IDLE = timedelta(hours=1)


async def tenant(p: Platform) -> Tenant:
    return await p.tenants.create(f"sl-{secrets.token_hex(4)}", usage_mode="hybrid")


async def person(p: Platform, t: Tenant | None) -> User:
    role = "user" if t else "platform_admin"
    return await p.users.create(t.id if t else None, f"p-{secrets.token_hex(4)}@x.io", role=role)


async def session_of(
    p: Platform, user: User, *, max_age: timedelta = timedelta(hours=8), method: str | None = None
) -> Session:
    session, _ = await p.sessions.create(
        user.id,
        user.tenant_id,
        max_age=max_age,
        client_ip="10.0.0.1",
        user_agent="laptop",
        method=method,
    )
    return session


async def idle_session_of(p: Platform, user: User) -> Session:
    """A session of ``user`` last used just over the idle timeout ago."""
    session = await session_of(p, user)
    async with p.db.engine.begin() as conn:
        await conn.execute(
            update(sessions)
            .where(sessions.c.id == session.id)
            .values(last_used_at=utcnow() - IDLE - timedelta(seconds=1))
        )
    return session


async def test_only_live_sessions_of_the_user_are_listed(platform: Platform) -> None:
    p, t = platform, await tenant(platform)
    ann, bob = await person(p, t), await person(p, t)
    fresh = await session_of(p, ann, method="ldap")
    revoked = await session_of(p, ann)
    await p.sessions.revoke(revoked.id, "logout")
    idle = await idle_session_of(p, ann)
    await session_of(p, ann, max_age=timedelta(seconds=-1))  # past its absolute age
    await session_of(p, bob)
    [live] = await p.sessions.live(t.id, ann.id, idle=IDLE)
    assert (live.id, live.method, live.client_ip, live.user_agent) == (
        fresh.id,
        "ldap",
        "10.0.0.1",
        "laptop",
    )
    longer = await p.sessions.live(t.id, ann.id, idle=IDLE * 2)  # the idle one counts again
    assert {s.id for s in longer} == {fresh.id, idle.id}
    other = await tenant(p)
    assert await p.sessions.live(other.id, ann.id, idle=IDLE) == []  # wrong tenant: nothing
    view = session_view(live, current=live.id)
    assert view == {
        "id": live.id,
        "created_at": live.created_at.isoformat(),
        "last_used_at": live.last_used_at.isoformat(),
        "expires_at": live.expires_at.isoformat(),
        "client_ip": "10.0.0.1",
        "user_agent": "laptop",
        "method": "ldap",
        "current": True,
    }
    assert session_view(live)["current"] is False


async def test_end_touches_only_a_live_session_of_that_user(platform: Platform) -> None:
    p, t = platform, await tenant(platform)
    ann, bob = await person(p, t), await person(p, t)
    mine, theirs = await session_of(p, ann), await session_of(p, bob)
    idle = await idle_session_of(p, ann)
    other = await tenant(p)
    assert not await p.sessions.end(t.id, ann.id, theirs.id, "x", idle=IDLE)  # bob's
    assert not await p.sessions.end(other.id, bob.id, theirs.id, "x", idle=IDLE)  # wrong tenant
    assert not await p.sessions.end(t.id, ann.id, idle.id, "x", idle=IDLE)  # already over
    assert [s.id for s in await p.sessions.live(t.id, bob.id, idle=IDLE)] == [theirs.id]
    assert await p.sessions.end(t.id, ann.id, mine.id, ENDED_BY_ADMIN, idle=IDLE)
    assert not await p.sessions.end(t.id, ann.id, mine.id, ENDED_BY_ADMIN, idle=IDLE)
    ended = await p.sessions.get(mine.id)
    assert ended is not None
    assert ended.revoked_reason == ENDED_BY_ADMIN


async def test_revoke_user_ends_idle_ones_too_and_spares_keep(platform: Platform) -> None:
    p, t = platform, await tenant(platform)
    ann, bob = await person(p, t), await person(p, t)
    keep, other = await session_of(p, ann), await session_of(p, ann)
    idle = await idle_session_of(p, ann)
    await session_of(p, ann, max_age=timedelta(seconds=-1))  # long over: left alone
    bobs = await session_of(p, bob)
    ended = await p.sessions.revoke_user(ann.id, "x", tenant_id=t.id, keep=keep.id)
    assert sorted(ended) == sorted([other.id, idle.id])
    assert [s.id for s in await p.sessions.live(t.id, ann.id, idle=IDLE * 2)] == [keep.id]
    assert [s.id for s in await p.sessions.live(t.id, bob.id, idle=IDLE)] == [bobs.id]


async def test_a_platform_admins_sessions_have_no_tenant(platform: Platform) -> None:
    p = platform
    root = await person(p, None)
    mine = await session_of(p, root)
    assert [s.id for s in await p.sessions.live(None, root.id, idle=IDLE)] == [mine.id]
    assert await p.sessions.revoke_user(root.id, "x", tenant_id=None) == [mine.id]
    assert await p.sessions.live(None, root.id, idle=IDLE) == []


async def test_reads_and_writes_run_in_the_users_tenant_scope(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the scope is row-level security (switchboard.store.isolation); the
    repository must enter it for a tenant's user, and stay on the platform's connection for a
    platform admin (whose sessions have no tenant)."""
    p, t = platform, await tenant(platform)
    ann, root = await person(p, t), await person(p, None)
    first, root_session = await session_of(p, ann), await session_of(p, root)
    entered: list[str] = []
    real: Callable[[str], AbstractAsyncContextManager[AsyncConnection]] = p.db.tenant_scope

    @asynccontextmanager
    async def spy(tenant_id: str) -> AsyncIterator[AsyncConnection]:
        entered.append(tenant_id)
        async with real(tenant_id) as conn:
            yield conn

    monkeypatch.setattr(p.db, "tenant_scope", spy)
    assert [s.id for s in await p.sessions.live(t.id, ann.id, idle=IDLE)] == [first.id]
    assert await p.sessions.end(t.id, ann.id, first.id, "x", idle=IDLE)
    await p.sessions.revoke_user(ann.id, "x", tenant_id=t.id)
    assert entered == [t.id, t.id, t.id]
    assert [s.id for s in await p.sessions.live(None, root.id, idle=IDLE)] == [root_session.id]
    await p.sessions.revoke_user(root.id, "x", tenant_id=None)
    assert entered == [t.id, t.id, t.id]


async def signed_in(worker: SessionService, t: Tenant, email: str, n: int) -> list[str]:
    """``n`` sessions of one external user; returns their access tokens."""
    who = identity(email, subject=f"sub-{email}")
    pairs = [await worker.sign_in_external(t.slug, who, "user", None) for _ in range(n)]
    return [pair.access_token for pair in pairs]


async def test_ending_a_session_reaches_this_workers_cache_at_once(platform: Platform) -> None:
    t = await tenant(platform)
    here, elsewhere, uncached = service(platform), service(platform), service(platform, check_ttl=0)
    first, second, third = await signed_in(here, t, "c@example.com", 3)
    principals = [await here.authenticate(token) for token in (first, second, third)]
    for token in (first, second, third):
        await elsewhere.authenticate(token)  # every worker has seen them alive
    user_id = principals[0].user_id
    assert user_id is not None
    live = await here.live_sessions(t.id, user_id)
    assert {s.id for s in live} == {pr.session_id for pr in principals}
    assert {s.method for s in live} == {"oidc"}
    second_id = principals[1].session_id
    assert second_id is not None
    await here.end_session(t.id, user_id, second_id, ENDED_BY_ADMIN)
    with pytest.raises(AuthenticationFailed) as refused:
        await here.authenticate(second)  # cached alive a moment ago
    assert refused.value.code == "session_revoked"
    assert (await elsewhere.authenticate(second)).session_id == second_id  # until check_ttl
    with pytest.raises(AuthenticationFailed):
        await uncached.authenticate(second)
    with pytest.raises(NotFound):
        await here.end_session(t.id, user_id, second_id, ENDED_BY_ADMIN)
    # The first session ends all the others: the third stops at once here too.
    assert await here.end_other_sessions(principals[0], CLIENT) == 1
    with pytest.raises(AuthenticationFailed) as others:
        await here.authenticate(third)
    assert others.value.code == "session_revoked"
    assert (await here.authenticate(first)).session_id == principals[0].session_id
    [row] = await platform.audit.query(
        AuditFilter(tenant_id=t.id, action="auth.session.revoke_others")
    )
    assert (row.actor_id, row.target, row.details) == (user_id, user_id, {"sessions": 1})


async def test_a_person_cannot_end_someone_elses_session(platform: Platform) -> None:
    t = await tenant(platform)
    worker = service(platform)
    [mine] = await signed_in(worker, t, "d@example.com", 1)
    [theirs] = await signed_in(worker, t, "e@example.com", 1)
    me, them = await worker.authenticate(mine), await worker.authenticate(theirs)
    assert them.session_id is not None
    with pytest.raises(NotFound):
        await worker.end_own_session(me, them.session_id, CLIENT)
    assert (await worker.authenticate(theirs)).session_id == them.session_id
    [row] = await platform.audit.query(AuditFilter(tenant_id=t.id, action="auth.session.revoke"))
    assert (row.outcome, row.actor_id, row.target) == ("not_found", me.user_id, them.session_id)

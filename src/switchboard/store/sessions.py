"""Sign-in sessions: one row per refresh-token family.

A refresh token is ``<session id>.<secret>``; only the SHA-256 of the secret is stored. Each
refresh replaces the stored hash (rotation) in one conditional UPDATE, so of two refreshes
racing with the same token exactly one wins. A token that names a live session but does not
match its current hash is an old, already rotated one: `rotate` reports that as reuse and
the caller revokes the whole family.

A person's own sessions (`live`, `end`, `revoke_user`) are read and written in their tenant's
scope, so on PostgreSQL row-level security holds there too; platform admins' sessions (no
tenant) on the platform's own connection. Looking a session up by its id alone (`get`,
`rotate`, `revoke`) is what turns a token back into a session, before any tenant is known.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, insert, select, update

from switchboard.store.database import Database, as_utc, utcnow
from switchboard.store.keys import hash_secret
from switchboard.store.schema import sessions

RotateOutcome = Literal["rotated", "reused", "unknown"]


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user_id: str
    tenant_id: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    client_ip: str | None = None
    user_agent: str | None = None
    method: str | None = None  # how it was signed in: password, ldap, oidc (None: unknown)

    def alive(self, now: datetime, idle: timedelta) -> bool:
        return self.revoked_at is None and self.expires_at > now and self.last_used_at + idle > now


def _session(row: Mapping[Any, Any]) -> Session:
    created, used, expires = (
        as_utc(row["created_at"]),
        as_utc(row["last_used_at"]),
        as_utc(row["expires_at"]),
    )
    assert created is not None
    assert used is not None
    assert expires is not None
    return Session(
        id=row["id"],
        user_id=row["user_id"],
        tenant_id=row["tenant_id"],
        created_at=created,
        last_used_at=used,
        expires_at=expires,
        revoked_at=as_utc(row["revoked_at"]),
        revoked_reason=row["revoked_reason"],
        client_ip=row["client_ip"],
        user_agent=row["user_agent"],
        method=row["method"],
    )


def _unrevoked(tenant_id: str | None, user_id: str, now: datetime) -> list[ColumnElement[bool]]:
    """A user's sessions neither revoked nor past their absolute age at ``now``."""
    tenant = (
        sessions.c.tenant_id.is_(None) if tenant_id is None else sessions.c.tenant_id == tenant_id
    )
    return [
        sessions.c.user_id == user_id,
        tenant,
        sessions.c.revoked_at.is_(None),
        sessions.c.expires_at > now,
    ]


def _owned_live(
    tenant_id: str | None, user_id: str, now: datetime, idle: timedelta
) -> list[ColumnElement[bool]]:
    """A user's sessions that are alive at ``now`` (the same test as `Session.alive`)."""
    return [*_unrevoked(tenant_id, user_id, now), sessions.c.last_used_at > now - idle]


def split_refresh_token(token: str) -> tuple[str, str] | None:
    session_id, dot, secret = token.partition(".")
    if not dot or not session_id.startswith("ses_") or not secret or len(token) > 200:
        return None
    return session_id, secret


class SessionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        user_id: str,
        tenant_id: str | None,
        *,
        max_age: timedelta,
        client_ip: str | None,
        user_agent: str | None,
        method: str | None = None,
    ) -> tuple[Session, str]:
        """A new session and its first refresh token (returned once, stored hashed)."""
        now = utcnow()
        session_id = f"ses_{secrets.token_hex(12)}"
        secret = secrets.token_urlsafe(32)
        values = {
            "id": session_id,
            "user_id": user_id,
            "tenant_id": tenant_id,
            "refresh_hash": hash_secret(secret),
            "created_at": now,
            "last_used_at": now,
            "expires_at": now + max_age,
            "revoked_at": None,
            "revoked_reason": None,
            "client_ip": client_ip,
            "user_agent": (user_agent or "")[:300] or None,
            "method": method,
        }
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(sessions).values(values))
        return _session(values), f"{session_id}.{secret}"

    async def get(self, session_id: str) -> Session | None:
        async with self._db.engine.connect() as conn:
            row = (
                (await conn.execute(select(sessions).where(sessions.c.id == session_id)))
                .mappings()
                .first()
            )
        return None if row is None else _session(row)

    async def rotate(self, token: str) -> tuple[RotateOutcome, Session | None, str | None]:
        """Swap the refresh token for a new one; ('reused', session, None) when the token is
        an old one of a known session, ('unknown', None, None) when it names none."""
        parts = split_refresh_token(token)
        if parts is None:
            return "unknown", None, None
        session_id, secret = parts
        session = await self.get(session_id)
        if session is None:
            return "unknown", None, None
        fresh = secrets.token_urlsafe(32)
        now = utcnow()
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(sessions)
                .where(
                    sessions.c.id == session_id,
                    sessions.c.refresh_hash == hash_secret(secret),
                    sessions.c.revoked_at.is_(None),
                )
                .values(refresh_hash=hash_secret(fresh), last_used_at=now)
            )
        if result.rowcount != 1:
            return "reused", session, None
        return "rotated", session, f"{session_id}.{fresh}"

    async def revoke(self, session_id: str, reason: str) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )

    async def live(
        self, tenant_id: str | None, user_id: str, *, idle: timedelta, limit: int = 1000
    ) -> list[Session]:
        """A user's live sessions (not revoked, not past their age or idle timeout), most
        recently used first, at most ``limit``."""
        query = (
            select(sessions)
            .where(*_owned_live(tenant_id, user_id, utcnow(), idle))
            .order_by(sessions.c.last_used_at.desc(), sessions.c.id)
            .limit(limit)
        )
        async with self._db.reading(tenant_id) as conn:
            return [_session(r) for r in (await conn.execute(query)).mappings()]

    async def end(
        self, tenant_id: str | None, user_id: str, session_id: str, reason: str, *, idle: timedelta
    ) -> bool:
        """Revoke one live session of a user; False when they have no such session."""
        now = utcnow()
        statement = (
            update(sessions)
            .where(sessions.c.id == session_id, *_owned_live(tenant_id, user_id, now, idle))
            .values(revoked_at=now, revoked_reason=reason)
        )
        async with self._db.writing(tenant_id) as conn:
            result = await conn.execute(statement)
        return result.rowcount == 1

    async def revoke_user(
        self, user_id: str, reason: str, *, tenant_id: str | None, keep: str | None = None
    ) -> list[str]:
        """Revoke every session of a user but ``keep`` that could still be used (idle ones
        too: a longer idle timeout would bring them back); return their ids."""
        now = utcnow()
        live = _unrevoked(tenant_id, user_id, now)
        if keep is not None:
            live.append(sessions.c.id != keep)
        async with self._db.writing(tenant_id) as conn:
            ids = list((await conn.execute(select(sessions.c.id).where(*live))).scalars())
            await conn.execute(
                update(sessions).where(*live).values(revoked_at=now, revoked_reason=reason)
            )
        return ids

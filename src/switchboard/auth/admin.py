"""The platform admin key that guards /admin/v1.

It comes from ``SWITCHBOARD_ADMIN_KEY``; when that is unset, one is generated at first start,
printed once, and only its hash is kept (table ``platform_secrets``).
"""

from __future__ import annotations

import hmac
import secrets

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from switchboard.auth.bearer import bearer_token
from switchboard.errors import AuthenticationFailed
from switchboard.store.database import Database, utcnow
from switchboard.store.keys import hash_secret
from switchboard.store.schema import platform_secrets

_NAME = "admin_key"


async def ensure_admin_key(db: Database) -> str | None:
    """Create the stored admin key if there is none; return it (once) when created."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(platform_secrets.c.name).where(platform_secrets.c.name == _NAME)
            )
        ).first()
    if row is not None:
        return None
    secret = "sk-sb-admin-" + secrets.token_urlsafe(32)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                insert(platform_secrets).values(
                    name=_NAME, secret_hash=hash_secret(secret), created_at=utcnow()
                )
            )
    except IntegrityError:  # another worker created it first
        return None
    return secret


class AdminAuthenticator:
    def __init__(self, db: Database, configured: str | None) -> None:
        self._db = db
        self._configured = configured
        self._stored_hash: str | None = None

    async def check(self, authorization: str | None) -> None:
        token = bearer_token(authorization)
        if self._configured is not None:
            if hmac.compare_digest(token.encode(), self._configured.encode()):
                return
            raise AuthenticationFailed("invalid admin key")
        if self._stored_hash is None:
            async with self._db.engine.connect() as conn:
                self._stored_hash = (
                    await conn.execute(
                        select(platform_secrets.c.secret_hash).where(
                            platform_secrets.c.name == _NAME
                        )
                    )
                ).scalar()
        if self._stored_hash is None or not hmac.compare_digest(
            hash_secret(token), self._stored_hash
        ):
            raise AuthenticationFailed("invalid admin key")

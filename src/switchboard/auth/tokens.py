"""Access tokens: short-lived JWTs signed with HS256.

Claims: ``sub`` (user id), ``sid`` (session id), ``tenant`` (tenant id, null for platform
admins), ``role``, ``dept`` (department id or null), ``iat``, ``exp``, ``iss`` and ``aud``.
Verification pins the algorithm to HS256 (so ``alg: none`` or a public-key confusion never
passes) and requires every one of those claims. The signing key is
``SWITCHBOARD_SESSION_SECRET`` or, when unset, 32 random bytes generated at first start and
kept in ``platform_secrets`` so every worker and restart shares it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from switchboard.errors import AuthenticationFailed
from switchboard.store.database import Database, utcnow
from switchboard.store.schema import platform_secrets
from switchboard.store.users import User

ALGORITHM = "HS256"
ISSUER = "switchboard"
AUDIENCE = "switchboard-admin"
_REQUIRED = ["sub", "sid", "role", "iat", "exp", "iss", "aud"]
_SECRET_NAME = "session_secret"  # noqa: S105 (a row name, not a secret)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    session_id: str
    tenant_id: str | None
    role: str
    department_id: str | None
    expires_at: int


async def session_secret(db: Database, configured: str | None) -> bytes:
    """The configured signing key, or the stored one (created at first use)."""
    if configured:
        return configured.encode()
    query = select(platform_secrets.c.secret_hash).where(platform_secrets.c.name == _SECRET_NAME)
    async with db.engine.connect() as conn:
        stored = (await conn.execute(query)).scalar()
    if stored is None:
        try:
            async with db.engine.begin() as conn:
                await conn.execute(
                    insert(platform_secrets).values(
                        name=_SECRET_NAME, secret_hash=secrets.token_hex(32), created_at=utcnow()
                    )
                )
        except IntegrityError:  # another worker stored one first; use theirs
            pass
        async with db.engine.connect() as conn:
            stored = (await conn.execute(query)).scalar_one()
    return bytes.fromhex(stored)


class AccessTokens:
    def __init__(self, secret: bytes, *, ttl_seconds: int) -> None:
        if len(secret) < 32:
            raise ValueError("the session signing key must be at least 32 bytes")
        self._secret = secret
        self.ttl = ttl_seconds

    def issue(self, user: User, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "sub": user.id,
            "sid": session_id,
            "tenant": user.tenant_id,
            "role": user.role,
            "dept": user.department_id,
            "iat": now,
            "exp": now + self.ttl,
            "iss": ISSUER,
            "aud": AUDIENCE,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed(
                "the access token has expired; refresh it", code="token_expired"
            ) from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("invalid access token", code="invalid_token") from exc
        if not isinstance(claims["sub"], str) or not isinstance(claims["sid"], str):
            raise AuthenticationFailed("invalid access token", code="invalid_token")
        return AccessClaims(
            user_id=claims["sub"],
            session_id=claims["sid"],
            tenant_id=claims.get("tenant"),
            role=str(claims["role"]),
            department_id=claims.get("dept"),
            expires_at=int(claims["exp"]),
        )

"""Human sign-in: password login, external (LDAP/OIDC) sign-in, refresh, logout, a person's
list of live sessions and ending them one or all, and turning an access token back into a
`Principal`.

A session is a refresh-token family (`switchboard.store.sessions`). Its lifetime is bounded
three ways: an absolute maximum age, an idle timeout (no refresh for that long ends it), and
revocation (logout, refresh-token reuse, user disabled or deleted, a session ended from the
session list by its owner or an admin).

Access tokens are checked against their session through a small in-process cache: a session
seen alive is trusted for ``check_ttl`` seconds. Logout (and every other revocation) takes
effect at once in the worker that handled it and within ``check_ttl`` seconds on every other
worker; an access token can never outlive its own ``exp`` either. Role, department and the
disabled flag are read with the session, so a demotion also takes effect within ``check_ttl``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from switchboard.auth.audit import Auditor, ClientInfo
from switchboard.auth.external import ExternalIdentity
from switchboard.auth.passwords import check_password, hash_password, verify_password
from switchboard.auth.roles import Principal, Role, check_role
from switchboard.auth.throttle import LoginKey, LoginThrottle
from switchboard.auth.tokens import AccessTokens
from switchboard.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from switchboard.platform import Platform
from switchboard.store.database import utcnow
from switchboard.store.sessions import Session
from switchboard.store.users import User
from switchboard.views import plain

_INVALID_LOGIN = "invalid e-mail, password or tenant"
_MAX_CACHED = 100_000
# Why a session ended from a session list (its ``revoked_reason``).
ENDED_BY_USER = "revoked_by_user"
ENDED_BY_ADMIN = "revoked_by_admin"
_SESSION_FIELDS = (
    "id",
    "created_at",
    "last_used_at",
    "expires_at",
    "client_ip",
    "user_agent",
    "method",
)


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What a successful sign-in or refresh hands the client."""

    access_token: str
    refresh_token: str
    expires_in: int  # seconds until the access token expires
    refresh_expires_at: datetime  # the session's absolute end
    session_id: str
    user: User

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_at": self.refresh_expires_at.isoformat(),
            "session_id": self.session_id,
            "user": user_view(self.user),
        }


def user_view(user: User) -> dict[str, Any]:
    """A user as the API shows it (there is no secret on `User` to leave out)."""
    return plain(user)


def session_view(session: Session, current: str | None = None) -> dict[str, Any]:
    """A session as its owner and their admins see it; ``current``: the caller's session id.
    Never a token or its hash (`Session` holds neither)."""
    view = plain(session)
    return {**{name: view[name] for name in _SESSION_FIELDS}, "current": session.id == current}


def principal_of(user: User, session_id: str | None = None) -> Principal:
    return Principal(
        kind="user",
        role=user.role,
        user_id=user.id,
        email=user.email,
        tenant_id=user.tenant_id,
        department_id=user.department_id,
        session_id=session_id,
    )


@dataclass(slots=True)
class _Checked:
    principal: Principal | None  # None: the session is over
    reason: str
    fresh_until: float  # monotonic
    idle_deadline: float  # wall clock: past it, look again (a refresh elsewhere may extend it)


class SessionService:
    def __init__(
        self,
        platform: Platform,
        tokens: AccessTokens,
        auditor: Auditor,
        throttle: LoginThrottle,
        *,
        idle_timeout: timedelta,
        max_age: timedelta,
        check_ttl: float,
    ) -> None:
        self._platform = platform
        self._tokens = tokens
        self._audit = auditor
        self._throttle = throttle
        self._idle = idle_timeout
        self._max_age = max_age
        self._check_ttl = check_ttl
        self._checked: dict[str, _Checked] = {}

    # -- signing in ------------------------------------------------------------------------

    async def login(
        self, tenant: str | None, email: str, password: str, client: ClientInfo
    ) -> TokenPair:
        """Password sign-in; ``tenant`` (slug or id) is None for platform admins. Every
        failure looks and takes the same: 401 ``invalid_credentials``."""
        email = email.strip().lower()
        tenant_id = await self._tenant_id(tenant)
        # Counted by the tenant's id, so its slug and its id share one allowance.
        throttle_key = LoginKey(tenant_id or tenant or "", email, client.ip or "")
        await self._throttle.check(throttle_key)
        found: tuple[User, str | None] | None = None
        if tenant is None or tenant_id is not None:
            found = await self._platform.users.credentials(tenant_id, email)
        user, stored = found if found else (None, None)
        password_ok = await verify_password(stored, password)  # runs even when user is None
        if user is None or not password_ok or user.disabled:
            await self._throttle.failed(throttle_key)
            await self._audit.record(
                None,
                "auth.login",
                tenant_id=tenant_id,
                outcome="failed",
                actor_id=email,
                details={"method": "password", "tenant": tenant},
                client=client,
            )
            raise AuthenticationFailed(_INVALID_LOGIN, code="invalid_credentials")
        await self._throttle.succeeded(throttle_key)
        return await self._start(user, client, method="password")

    async def _tenant_id(self, tenant: str | None) -> str | None:
        """The id of the tenant named by slug or id; None for none, or an unknown one."""
        if tenant is None:
            return None
        try:
            return (await self._platform.tenants.get(tenant)).id
        except NotFound:
            return None

    async def sign_in_external(
        self,
        tenant: str,
        identity: ExternalIdentity,
        role: Role,
        department: str | None,
        *,
        client: ClientInfo | None = None,
    ) -> TokenPair:
        """Provision or update the user an outside identity provider vouched for, and sign
        them in. Called by the LDAP and OIDC login flows after they mapped groups or claims.

        ``tenant``: slug or id of the tenant the login belongs to. ``identity``: what the
        provider proved. ``role``: the mapped role, one of tenant_admin, department_admin,
        user (platform_admin is refused: platform admins have no tenant). ``department``:
        the mapped department's name, created in the tenant when missing, or None.
        ``client``: the caller's address and user agent, for the audit log.

        The user is found by (tenant, source, subject); their e-mail, name, role and
        department are updated from the provider on every sign-in. A new subject whose e-mail
        already belongs to another account of the tenant is refused (403
        ``account_conflict``) rather than merged, so a provider cannot take over an account.
        A disabled user is refused (401 ``invalid_credentials``). Returns a `TokenPair`;
        ``pair.as_json()`` is the response body /auth/v1/login gives.
        """
        client = client or ClientInfo()
        role = check_role(role)
        if role == "platform_admin":
            raise PermissionDenied("an external sign-in cannot make a platform admin")
        owner = await self._platform.tenants.get(tenant)
        department_id = None
        if department:
            department_id = (await self._platform.departments.ensure(owner.id, department)).id
        users = self._platform.users
        user = await users.find_external(owner.id, identity.source, identity.subject)
        fields: dict[str, Any] = {
            "email": identity.email,
            "name": identity.name,
            "role": role,
            "department_id": department_id,
        }
        if user is None:
            if await users.find_by_email(owner.id, identity.email) is not None:
                await self._external_failed(owner.id, identity, "account_conflict", client)
                raise PermissionDenied(
                    "an account with this e-mail already exists with another sign-in method",
                    code="account_conflict",
                )
            user = await users.create(
                owner.id,
                identity.email,
                role=role,
                name=identity.name,
                department_id=department_id,
                source=identity.source,
                external_subject=identity.subject,
            )
        elif any(getattr(user, k) != v for k, v in fields.items()):
            user = await users.update(owner.id, user.id, **fields)
        if user.disabled:
            await self._external_failed(owner.id, identity, "disabled", client)
            raise AuthenticationFailed(_INVALID_LOGIN, code="invalid_credentials")
        return await self._start(user, client, method=identity.source)

    async def _external_failed(
        self, tenant_id: str, identity: ExternalIdentity, reason: str, client: ClientInfo
    ) -> None:
        await self._audit.record(
            None,
            "auth.login",
            tenant_id=tenant_id,
            outcome="failed",
            actor_id=identity.email,
            details={"method": identity.source, "reason": reason},
            client=client,
        )

    async def _start(self, user: User, client: ClientInfo, *, method: str) -> TokenPair:
        session, refresh = await self._platform.sessions.create(
            user.id,
            user.tenant_id,
            max_age=self._max_age,
            client_ip=client.ip,
            user_agent=client.user_agent,
            method=method,
        )
        await self._platform.users.touch_login(user.id)
        await self._audit.record(
            principal_of(user, session.id),
            "auth.login",
            tenant_id=user.tenant_id,
            target=session.id,
            details={"method": method},
            client=client,
        )
        return self._pair(user, session.id, refresh, session.expires_at)

    def _pair(self, user: User, session_id: str, refresh: str, ends: datetime) -> TokenPair:
        return TokenPair(
            access_token=self._tokens.issue(user, session_id),
            refresh_token=refresh,
            expires_in=self._tokens.ttl,
            refresh_expires_at=ends,
            session_id=session_id,
            user=user,
        )

    # -- refresh and logout ----------------------------------------------------------------

    async def refresh(self, refresh_token: str, client: ClientInfo) -> TokenPair:
        """A new access token and a new refresh token; the old refresh token is spent. Reuse
        of a spent one revokes the whole session (someone holds a copy)."""
        sessions = self._platform.sessions
        outcome, session, fresh = await sessions.rotate(refresh_token)
        if session is None:
            raise AuthenticationFailed("invalid refresh token", code="invalid_refresh_token")
        if outcome == "reused":
            if session.revoked_at is None:
                await sessions.revoke(session.id, "refresh_reuse")
                self._forget(session.id)
                await self._audit.record(
                    None,
                    "auth.refresh_reuse",
                    tenant_id=session.tenant_id,
                    target=session.id,
                    outcome="denied",
                    actor_id=session.user_id,
                    details={"session_revoked": True},
                    client=client,
                )
            raise AuthenticationFailed(
                "this refresh token was already used or the session has ended; sign in again",
                code="refresh_token_reused" if session.revoked_at is None else "session_revoked",
            )
        now = utcnow()
        # rotate() stamped last_used_at; the session as read before it tells the idle time.
        user = await self._platform.users.get_any(session.user_id)
        if not session.alive(now, self._idle) or user is None or user.disabled:
            await sessions.revoke(session.id, "expired")
            self._forget(session.id)
            raise AuthenticationFailed(
                "the session has expired; sign in again", code="session_expired"
            )
        assert fresh is not None
        self._forget(session.id)
        return self._pair(user, session.id, fresh, session.expires_at)

    async def logout(self, principal: Principal, client: ClientInfo) -> None:
        _user_id, session_id = _signed_in(principal)
        await self._platform.sessions.revoke(session_id, "logout")
        self._revoked(session_id)
        await self._audit.record(
            principal,
            "auth.logout",
            tenant_id=principal.tenant_id,
            target=session_id,
            client=client,
        )

    async def end_user_sessions(
        self, user_id: str, reason: str, *, tenant_id: str | None, keep: str | None = None
    ) -> list[str]:
        """Revoke every session of a user but ``keep`` (disabled, deleted, password changed,
        ended by an admin or from their other sessions); return the ids ended."""
        ended = await self._platform.sessions.revoke_user(
            user_id, reason, tenant_id=tenant_id, keep=keep
        )
        for session_id in ended:
            self._revoked(session_id)
        return ended

    # -- a person's session list -----------------------------------------------------------

    async def live_sessions(self, tenant_id: str | None, user_id: str) -> list[Session]:
        """The user's sessions that still work, most recently used first."""
        return await self._platform.sessions.live(tenant_id, user_id, idle=self._idle)

    async def end_session(
        self, tenant_id: str | None, user_id: str, session_id: str, reason: str
    ) -> None:
        """End one live session of the user; 404 when they have none with that id (whoever
        else's it may be)."""
        sessions = self._platform.sessions
        if not await sessions.end(tenant_id, user_id, session_id, reason, idle=self._idle):
            raise NotFound(f"no session {session_id!r}", param="session_id")
        self._revoked(session_id)

    async def end_own_session(
        self, principal: Principal, session_id: str, client: ClientInfo
    ) -> None:
        """The caller ends one of their sessions; ending the current one is a logout."""
        user_id, current = _signed_in(principal)
        if session_id == current:
            await self.logout(principal, client)
            return
        missing: NotFound | None = None
        try:
            await self.end_session(principal.tenant_id, user_id, session_id, ENDED_BY_USER)
        except NotFound as exc:  # another person's id looks like an unknown one; audited
            missing = exc
        await self._audit.record(
            principal,
            "auth.session.revoke",
            tenant_id=principal.tenant_id,
            target=session_id[:64],
            outcome="ok" if missing is None else "not_found",
            client=client,
        )
        if missing is not None:
            raise missing

    async def end_other_sessions(self, principal: Principal, client: ClientInfo) -> int:
        """The caller ends every session of theirs but the current one; returns how many."""
        user_id, current = _signed_in(principal)
        ended = await self.end_user_sessions(
            user_id, ENDED_BY_USER, tenant_id=principal.tenant_id, keep=current
        )
        await self._audit.record(
            principal,
            "auth.session.revoke_others",
            tenant_id=principal.tenant_id,
            target=user_id,
            details={"sessions": len(ended)},
            client=client,
        )
        return len(ended)

    # -- passwords -------------------------------------------------------------------------

    async def change_password(
        self, principal: Principal, current: str, new: str, client: ClientInfo
    ) -> None:
        """A signed-in local user sets a new password: the current one must match (failures
        count towards the sign-in throttle); every other session of theirs ends."""
        assert principal.user_id is not None
        new = check_password(new, "new_password")
        found = await self._platform.users.credentials(principal.tenant_id, principal.email or "")
        stored = found[1] if found and found[0].id == principal.user_id else None
        throttle_key = LoginKey(principal.tenant_id or "", principal.email or "", client.ip or "")
        await self._throttle.check(throttle_key)
        if not await verify_password(stored, current):
            await self._throttle.failed(throttle_key)
            await self._audit.record(
                principal,
                "auth.password_change",
                tenant_id=principal.tenant_id,
                target=principal.user_id,
                outcome="failed",
                client=client,
            )
            raise AuthenticationFailed("the current password is wrong", code="invalid_credentials")
        await self._throttle.succeeded(throttle_key)
        await self._platform.users.update(
            principal.tenant_id, principal.user_id, password_hash=await hash_password(new)
        )
        await self.end_user_sessions(
            principal.user_id,
            "password",
            tenant_id=principal.tenant_id,
            keep=principal.session_id,
        )
        await self._audit.record(
            principal,
            "auth.password_change",
            tenant_id=principal.tenant_id,
            target=principal.user_id,
            client=client,
        )

    # -- access tokens ---------------------------------------------------------------------

    async def authenticate(self, access_token: str) -> Principal:
        """The principal behind a valid access token of a live session; 401 otherwise."""
        claims = self._tokens.verify(access_token)
        checked = self._checked.get(claims.session_id)
        if (
            checked is None
            or checked.fresh_until < time.monotonic()
            or checked.idle_deadline <= time.time()
        ):
            checked = await self._check(claims.session_id)
        principal = checked.principal
        if principal is None:
            raise AuthenticationFailed("the session has ended; sign in again", code=checked.reason)
        if principal.user_id != claims.user_id:
            raise AuthenticationFailed("invalid access token", code="invalid_token")
        return principal

    async def _check(self, session_id: str) -> _Checked:
        fresh_until = time.monotonic() + self._check_ttl
        session = await self._platform.sessions.get(session_id)
        now = utcnow()
        user = await self._platform.users.get_any(session.user_id) if session else None
        if session is None or user is None:
            checked = _Checked(None, "invalid_token", fresh_until, float("inf"))
        elif session.revoked_at is not None:
            checked = _Checked(None, "session_revoked", fresh_until, float("inf"))
        elif not session.alive(now, self._idle):
            checked = _Checked(None, "session_expired", fresh_until, float("inf"))
        elif user.disabled:
            checked = _Checked(None, "user_disabled", fresh_until, float("inf"))
        else:
            idle_deadline = min(session.last_used_at + self._idle, session.expires_at)
            checked = _Checked(
                principal_of(user, session.id), "", fresh_until, idle_deadline.timestamp()
            )
        if len(self._checked) >= _MAX_CACHED:
            self._checked.clear()
        self._checked[session_id] = checked
        return checked

    def _forget(self, session_id: str) -> None:
        self._checked.pop(session_id, None)

    def _revoked(self, session_id: str) -> None:
        """This worker refuses the session's access tokens from now on, without asking the
        database (other workers: once their entry is older than ``check_ttl``)."""
        if len(self._checked) >= _MAX_CACHED:
            self._checked.clear()
        self._checked[session_id] = _Checked(
            None, "session_revoked", time.monotonic() + self._check_ttl, float("inf")
        )


def _signed_in(principal: Principal) -> tuple[str, str]:
    """The user and session ids of a principal signed in with a session (not a key, not the
    CLI)."""
    if principal.user_id is None or principal.session_id is None:
        raise InvalidRequest("only a signed-in session can do this")
    return principal.user_id, principal.session_id

"""Signing in through a tenant's identity provider: find the provider, prove the person (LDAP
bind or OIDC code flow), map groups/claims to a role and department, then hand over to the
session service (`SessionService.sign_in_external`), which provisions the user, starts the
session and audits it. Failed attempts are audited here, and LDAP attempts are throttled like
password sign-ins."""

from __future__ import annotations

import hmac

import httpx

from switchboard.auth.audit import Auditor, ClientInfo
from switchboard.auth.identity_providers import (
    IdentityProvider,
    LdapSettings,
    MappedIdentity,
    OidcSettings,
    local_path,
    map_identity,
)
from switchboard.auth.ldap import ldap_login
from switchboard.auth.oidc import LoginState, OidcClient
from switchboard.auth.secretbox import SecretBox
from switchboard.auth.sessions import SessionService, TokenPair
from switchboard.auth.throttle import LoginKey, LoginThrottle
from switchboard.errors import AuthenticationFailed, ClientError, InvalidRequest, NotFound
from switchboard.platform import Platform
from switchboard.store.identity_providers import IdentityProviderRepository
from switchboard.store.tenants import Tenant


def callback_path(tenant_slug: str, provider: str) -> str:
    return f"/auth/v1/oidc/{tenant_slug}/{provider}/callback"


class ExternalLogins:
    def __init__(
        self,
        platform: Platform,
        box: SecretBox,
        sessions: SessionService,
        auditor: Auditor,
        throttle: LoginThrottle,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.box = box
        self.providers = IdentityProviderRepository(platform.db, box)
        self._platform = platform
        self._sessions = sessions
        self._audit = auditor
        self._throttle = throttle
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self.oidc = OidcClient(self._http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _provider(self, tenant: Tenant, name: str | None, kind: str) -> IdentityProvider:
        if name is None:
            enabled = [
                p
                for p in await self.providers.list(tenant.id)
                if p.kind == kind and p.document.enabled
            ]
            if len(enabled) != 1:
                raise InvalidRequest(
                    f"name the {kind} provider to use ('provider')", param="provider"
                )
            return enabled[0]
        found = await self.providers.get(tenant.id, name)
        if found.kind != kind or not found.document.enabled:
            raise NotFound(f"no enabled {kind} provider {name!r} in this tenant", param="provider")
        return found

    async def _failed(
        self, tenant: Tenant, provider: str, who: str | None, reason: str, client: ClientInfo
    ) -> None:
        await self._audit.record(
            None,
            "auth.login",
            tenant_id=tenant.id,
            outcome="failed",
            actor_id=who,
            details={"method": "external", "provider": provider, "reason": reason},
            client=client,
        )

    async def _sign_in(
        self, tenant: Tenant, mapped: MappedIdentity, client: ClientInfo
    ) -> TokenPair:
        return await self._sessions.sign_in_external(
            tenant.id, mapped.identity, mapped.role, mapped.department, client=client
        )

    # -- LDAP / Active Directory ---------------------------------------------------------------

    async def ldap(
        self,
        tenant_ref: str,
        provider_name: str | None,
        username: str,
        password: str,
        client: ClientInfo,
    ) -> TokenPair:
        try:
            tenant = await self._platform.tenants.get(tenant_ref)
        except NotFound:  # an unknown tenant looks like any other failed sign-in
            raise AuthenticationFailed(
                "invalid username or password", code="invalid_credentials"
            ) from None
        provider = await self._provider(tenant, provider_name, "ldap")
        account = f"ldap:{provider.name}:{username.strip().lower()}"
        key = LoginKey(tenant.id, account, client.ip or "")
        await self._throttle.check(key)
        cfg = provider.document.settings
        assert isinstance(cfg, LdapSettings)
        try:
            identity = await ldap_login(cfg, provider.secret, username, password)
            mapped = map_identity(identity, provider.document.mapping)
        except ClientError as exc:
            if isinstance(exc, AuthenticationFailed):
                await self._throttle.failed(key)
            await self._failed(tenant, provider.name, username.strip(), exc.code or "", client)
            raise
        await self._throttle.succeeded(key)
        return await self._sign_in(tenant, mapped, client)

    # -- OpenID Connect ------------------------------------------------------------------------

    async def oidc_start(
        self,
        tenant_ref: str,
        provider_name: str,
        *,
        base_url: str,
        return_to: str | None,
        login_hint: str | None,
    ) -> tuple[str, str]:
        """The provider's authorization URL, and the sealed state for the browser's cookie."""
        tenant = await self._platform.tenants.get(tenant_ref)
        provider = await self._provider(tenant, provider_name, "oidc")
        cfg = provider.document.settings
        assert isinstance(cfg, OidcSettings)
        if return_to is not None:
            try:
                return_to = local_path(return_to)
            except ValueError as exc:
                raise InvalidRequest(
                    "'return_to' must be a path on this gateway", param="return_to"
                ) from exc
        url, state = await self.oidc.begin(
            cfg,
            tenant=tenant.id,
            provider=provider.name,
            redirect_uri=base_url + callback_path(tenant.slug, provider.name),
            return_path=return_to or cfg.return_path,
            login_hint=login_hint,
        )
        return url, state.seal(self.box)

    async def oidc_finish(
        self,
        tenant_ref: str,
        provider_name: str,
        sealed: str | None,
        params: dict[str, str],
        client: ClientInfo,
    ) -> tuple[TokenPair, str]:
        """Check the callback against the state the browser carried; the session and the
        path to send the browser to."""
        tenant = await self._platform.tenants.get(tenant_ref)
        state = LoginState.open(self.box, sealed)
        if (state.tenant, state.provider) != (tenant.id, provider_name):
            raise AuthenticationFailed(
                "this login was started for another provider", code="login_state_invalid"
            )
        provider = await self._provider(tenant, provider_name, "oidc")
        cfg = provider.document.settings
        assert isinstance(cfg, OidcSettings)
        try:
            if not _same(params.get("state"), state.state):
                raise AuthenticationFailed(
                    "the login's state does not match this browser's", code="state_mismatch"
                )
            if "error" in params:
                raise AuthenticationFailed(
                    f"the identity provider refused the login ({params['error'][:100]})",
                    code="oidc_refused",
                )
            code = params.get("code")
            if not code:
                raise InvalidRequest("the callback carries no 'code'", param="code")
            identity = await self.oidc.finish(cfg, provider.secret, state, code)
            mapped = map_identity(identity, provider.document.mapping)
        except ClientError as exc:
            await self._failed(tenant, provider.name, None, exc.code or "", client)
            raise
        return await self._sign_in(tenant, mapped, client), state.return_path


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())

"""OpenID Connect login: the authorization-code flow with PKCE (S256), ID token checked here.

`OidcClient.begin` builds the provider's authorization URL (authlib's OAuth 2 client computes
the PKCE challenge) and a `LoginState`: the state, the nonce and the PKCE verifier, sealed
(encrypted and time-stamped with the platform `SecretBox`) into a short-lived cookie, so any
gateway replica can finish the login. `OidcClient.finish` exchanges the code at the token
endpoint (authlib, with the verifier and the client's secret) and validates the ID token with
joserfc: the signature against the issuer's JWKS (a key id not seen before makes it fetch the
JWKS again, which is how key rotation is followed), then ``iss``, ``aud``, ``azp``, ``exp``,
``iat``, ``nonce``, and for Entra ID ``tid``.

Discovery documents and JWKS are cached per process. The ID token is only ever taken from the
token endpoint's reply (server to server), never from the browser.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from switchboard.auth.entra_groups import has_overage, member_groups
from switchboard.auth.external import ExternalIdentity
from switchboard.auth.identity_providers import OidcSettings, claim_values
from switchboard.auth.secretbox import SecretBox
from switchboard.errors import AuthenticationFailed, PermissionDenied, UpstreamUnavailable

log = logging.getLogger("switchboard.auth.oidc")

STATE_TTL_SECONDS = 600  # how long a started login may take at the provider
CLOCK_LEEWAY_SECONDS = 60
DISCOVERY_TTL_SECONDS = 3600.0
# Asymmetric algorithms only: never "none", never HS* (that would make the client secret a
# signing key).
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
ENTRA_TENANT_PLACEHOLDER = "{tenantid}"


@dataclass(frozen=True, slots=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoginState:
    """What the browser carries (sealed) from /start to /callback."""

    tenant: str
    provider: str
    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    return_path: str

    def seal(self, box: SecretBox) -> str:
        return box.encrypt(orjson.dumps(asdict(self)).decode())

    @classmethod
    def open(cls, box: SecretBox, sealed: str | None) -> LoginState:
        if not sealed:
            raise AuthenticationFailed(
                "no login in progress in this browser (cookies blocked, or it was started "
                "elsewhere); start again",
                code="login_state_missing",
            )
        try:
            return cls(**orjson.loads(box.decrypt(sealed, ttl=STATE_TTL_SECONDS)))
        except (ValueError, TypeError) as exc:
            raise AuthenticationFailed(
                "the login took too long or its state is not valid; start again",
                code="login_state_invalid",
            ) from exc


def _bad_token(reason: str) -> AuthenticationFailed:
    log.warning("refused an ID token: %s", reason)
    return AuthenticationFailed(
        f"the identity provider's ID token {reason}", code="invalid_id_token"
    )


class OidcClient:
    """Talks to OIDC providers for one gateway process; caches discovery and keys."""

    def __init__(self, http: httpx.AsyncClient, *, timeout: float = 10.0) -> None:
        self._http = http
        self._timeout = timeout
        self._discovery: dict[str, tuple[float, Discovery]] = {}
        self._keys: dict[str, KeySet] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the identity provider's {what} is unreachable") from exc
        if response.status_code != 200:
            raise UpstreamUnavailable(
                f"the identity provider's {what} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamUnavailable(f"the identity provider's {what} is not JSON") from exc
        if not isinstance(body, dict):
            raise UpstreamUnavailable(f"the identity provider's {what} is not a JSON object")
        return body

    async def discover(self, issuer: str) -> Discovery:
        cached = self._discovery.get(issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        doc = await self._get_json(f"{issuer}/.well-known/openid-configuration", "discovery")
        try:
            found = Discovery(
                issuer=str(doc["issuer"]).rstrip("/"),
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=str(doc["jwks_uri"]),
                algorithms=tuple(
                    a
                    for a in doc.get("id_token_signing_alg_values_supported", ["RS256"])
                    if a in SIGNING_ALGORITHMS
                ),
            )
        except KeyError as exc:
            raise UpstreamUnavailable(f"the discovery document lacks {exc.args[0]!r}") from exc
        # OIDC Discovery §4.3: the document must name the issuer it was fetched from. Entra's
        # multi-tenant endpoints (common, organizations) name a {tenantid} template instead.
        if found.issuer != issuer and ENTRA_TENANT_PLACEHOLDER not in found.issuer:
            raise UpstreamUnavailable(
                f"the discovery document names issuer {found.issuer!r}, not {issuer!r}"
            )
        self._discovery[issuer] = (time.monotonic() + DISCOVERY_TTL_SECONDS, found)
        return found

    async def begin(
        self,
        cfg: OidcSettings,
        *,
        tenant: str,
        provider: str,
        redirect_uri: str,
        return_path: str,
        login_hint: str | None = None,
    ) -> tuple[str, LoginState]:
        """The URL to send the browser to, and the state to seal into its cookie."""
        found = await self.discover(cfg.issuer)
        state = LoginState(
            tenant=tenant,
            provider=provider,
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),  # 64 characters, within RFC 7636's 43-128
            redirect_uri=redirect_uri,
            return_path=return_path,
        )
        extra = {"login_hint": login_hint} if login_hint else {}
        async with self._oauth(cfg, None, redirect_uri) as client:
            url, _ = client.create_authorization_url(
                found.authorization_endpoint,
                state=state.state,
                code_verifier=state.verifier,
                nonce=state.nonce,
                **extra,
            )
        return str(url), state

    def _oauth(
        self, cfg: OidcSettings, client_secret: str | None, redirect_uri: str
    ) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=cfg.client_id,
            client_secret=client_secret,
            token_endpoint_auth_method=cfg.token_auth_method,
            scope=" ".join(cfg.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=self._timeout,
            follow_redirects=False,
        )

    async def finish(
        self, cfg: OidcSettings, client_secret: str | None, state: LoginState, code: str
    ) -> ExternalIdentity:
        """Exchange the code and return who the provider says signed in."""
        found = await self.discover(cfg.issuer)
        try:
            async with self._oauth(cfg, client_secret, state.redirect_uri) as client:
                token = await client.fetch_token(
                    found.token_endpoint, code=code, code_verifier=state.verifier
                )
        except OAuthError as exc:  # the provider refused: bad code, PKCE, client secret...
            log.warning("the identity provider refused the code exchange: %s", exc.error)
            raise AuthenticationFailed(
                f"the identity provider refused the login ({exc.error})", code="oidc_refused"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable("the identity provider's token endpoint failed") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise _bad_token("is missing from the token response")
        claims = await self.validate(cfg, found, id_token, state.nonce)
        if has_overage(claims, cfg.groups_claim):  # Entra: too many groups for the token
            groups = await member_groups(
                self._http, cfg.graph_url, token.get("access_token"), self._timeout
            )
            claims = {**claims, cfg.groups_claim: groups}
        return _identity(cfg, claims)

    async def _key_set(self, jwks_uri: str, kid: str | None, *, refresh: bool) -> KeySet:
        lock = self._key_locks.setdefault(jwks_uri, asyncio.Lock())
        async with lock:
            keys = self._keys.get(jwks_uri)
            if keys is None or (refresh and kid is not None and _find(keys, kid) is None):
                try:
                    keys = KeySet.import_key_set(await self._get_json(jwks_uri, "JWKS"))  # type: ignore[arg-type]
                except (JoseError, ValueError, TypeError) as exc:
                    raise UpstreamUnavailable("the identity provider's JWKS is not valid") from exc
                self._keys[jwks_uri] = keys
            return keys

    async def validate(
        self, cfg: OidcSettings, found: Discovery, id_token: str, nonce: str
    ) -> dict[str, Any]:
        try:
            header = jws.extract_compact(id_token.encode()).protected
        except (JoseError, ValueError) as exc:
            raise _bad_token("is not a signed JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in (found.algorithms or ("RS256",)):
            raise _bad_token(f"uses the algorithm {alg!r}, which is not accepted")
        keys = await self._key_set(found.jwks_uri, kid, refresh=False)
        key = _find(keys, kid)
        if key is None:  # rotated since we looked: fetch the JWKS again (once)
            keys = await self._key_set(found.jwks_uri, kid, refresh=True)
            key = _find(keys, kid)
        if key is None:
            raise _bad_token("is signed with a key the provider does not publish")
        try:
            decoded = jwt.decode(id_token, key, algorithms=[alg])
        except (JoseError, ValueError) as exc:
            raise _bad_token("has a bad signature") from exc
        claims: dict[str, Any] = dict(decoded.claims)
        _check_claims(cfg, found, claims, nonce)
        return claims


def _find(keys: KeySet, kid: str | None) -> Any:
    if kid is None:
        return keys.keys[0] if len(keys.keys) == 1 else None
    return next((k for k in keys.keys if k.kid == kid), None)


def _check_claims(cfg: OidcSettings, found: Discovery, claims: dict[str, Any], nonce: str) -> None:
    issuer = found.issuer
    if ENTRA_TENANT_PLACEHOLDER in issuer:
        issuer = issuer.replace(ENTRA_TENANT_PLACEHOLDER, str(claims.get("tid", "")))
    registry = jwt.JWTClaimsRegistry(
        leeway=CLOCK_LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        aud={"essential": True, "value": cfg.client_id},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise _bad_token(f"failed a check: {exc.description or type(exc).__name__}") from exc
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != cfg.client_id:
        raise _bad_token("was issued to another party (azp)")
    if cfg.allowed_tenant_ids and claims.get("tid") not in cfg.allowed_tenant_ids:
        raise PermissionDenied(
            "your organisation's directory is not allowed to sign in here",
            code="tenant_not_allowed",
        )


def _identity(cfg: OidcSettings, claims: dict[str, Any]) -> ExternalIdentity:
    emails = claim_values(claims, cfg.email_claim)
    if not emails or "@" not in emails[0]:
        raise PermissionDenied(
            f"the identity provider sent no e-mail address (claim {cfg.email_claim!r})",
            code="no_email",
        )
    if claims.get("email_verified") is False:
        raise PermissionDenied("your e-mail address is not verified", code="email_unverified")
    names = claim_values(claims, cfg.name_claim)
    return ExternalIdentity(
        source="oidc",
        subject=f"{claims['iss']}|{claims['sub']}",
        email=emails[0],
        name=names[0] if names else None,
        groups=tuple(claim_values(claims, cfg.groups_claim)),
        claims=claims,
    )

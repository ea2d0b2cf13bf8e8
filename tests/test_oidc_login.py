"""OIDC login against the fake provider (tests/fakes/oidc_provider.py), Keycloak- and
Entra-shaped: the fake checked by authlib as an independent client, then our client's
flow and every refusal (state, nonce, audience, expiry, unknown key, PKCE, issuer, azp)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from cryptography.fernet import Fernet
from joserfc import jwt
from joserfc.jwk import KeySet

from fakes import oidc_provider
from fakes.server import ServerThread
from switchboard.auth.external import ExternalIdentity
from switchboard.auth.identity_providers import OidcSettings, RoleMapping, map_identity
from switchboard.auth.oidc import LoginState, OidcClient
from switchboard.auth.secretbox import SecretBox
from switchboard.errors import AuthenticationFailed, PermissionDenied

CLIENT_ID = "switchboard"
CLIENT_SECRET = "client-secret-" + secrets.token_hex(8)
CALLBACK = "http://127.0.0.1:1/auth/v1/oidc/acme/sso/callback"  # never followed here
ENTRA_TID = "9188040d-6c67-4c5b-b112-36a304b66dad"
REALM = "acme"

USERS = {
    "kim": oidc_provider.User(
        sub="f7a0c1d2-kim",
        email="kim@example.org",
        name="Kim Keycloak",
        groups=["/finance", "/staff"],
        roles=["sb-admin"],
        client_roles=["dept-admin"],
        department="Finance",
    ),
    "eve": oidc_provider.User(
        sub="AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        email="eve@contoso.example",
        name="Eve Entra",
        groups=["0d6b4d5e-7a0e-4b8f-9a57-3b1f0c0c1a11"],
        roles=["Switchboard.User"],
        department="Research",
    ),
    "unverified": oidc_provider.User(
        sub="u-1", email="u@example.org", name="U", email_verified=False
    ),
}


def fake_clients() -> dict[str, oidc_provider.Client]:
    return {CLIENT_ID: oidc_provider.Client(CLIENT_SECRET, [CALLBACK])}


@pytest.fixture(scope="module")
def idp() -> Iterator[ServerThread]:
    with ServerThread(oidc_provider.create_app(fake_clients(), USERS)) as server:
        yield server


@pytest.fixture(autouse=True)
def _untampered(idp: ServerThread) -> None:
    idp.app.state.tamper = {}
    idp.app.state.sign_with_foreign_key = False


@pytest.fixture
async def client() -> AsyncIterator[OidcClient]:
    async with httpx.AsyncClient() as http:
        yield OidcClient(http)


def keycloak(idp: ServerThread, **extra: Any) -> OidcSettings:
    return OidcSettings(issuer=f"{idp.url}/realms/{REALM}", client_id=CLIENT_ID, **extra)


def entra(idp: ServerThread, **extra: Any) -> OidcSettings:
    return OidcSettings(
        issuer=f"{idp.url}/{ENTRA_TID}/v2.0",
        client_id=CLIENT_ID,
        token_auth_method="client_secret_post",
        **extra,
    )


def authorize(url: str) -> dict[str, str]:
    """Follow the authorization URL to the provider; the query it redirects back with."""
    answer = httpx.get(url, follow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def login(
    client: OidcClient, cfg: OidcSettings, user: str, *, secret: str = CLIENT_SECRET
) -> ExternalIdentity:
    url, state = await client.begin(
        cfg, tenant="acme", provider="sso", redirect_uri=CALLBACK, return_path="/", login_hint=user
    )
    back = authorize(url)
    assert back["state"] == state.state
    return await client.finish(cfg, secret, state, back["code"])


# -- the fake, checked by authlib as an independent client -----------------------------------


async def test_fake_provider_speaks_oidc_to_authlib(idp: ServerThread) -> None:
    issuer = f"{idp.url}/realms/{REALM}"
    meta = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
    assert meta["issuer"] == issuer
    verifier = secrets.token_urlsafe(48)
    async with AsyncOAuth2Client(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope="openid email",
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
    ) as oauth:
        url, state = oauth.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier, nonce="n-1", login_hint="kim"
        )
        back = authorize(url)
        assert back["state"] == state
        token = await oauth.fetch_token(
            meta["token_endpoint"], code=back["code"], code_verifier=verifier
        )
        keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
        decoded = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": CLIENT_ID},
            nonce={"essential": True, "value": "n-1"},
            exp={"essential": True},
        ).validate(decoded.claims)
        assert decoded.claims["realm_access"]["roles"] == ["offline_access", "sb-admin"]
        assert idp.app.state.provider.token_requests[-1]["auth_method"] == "basic"

        with pytest.raises(OAuthError, match="invalid_grant"):  # a code is good once
            await oauth.fetch_token(
                meta["token_endpoint"], code=back["code"], code_verifier=verifier
            )
        url, _ = oauth.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier, nonce="n", login_hint="kim"
        )
        with pytest.raises(OAuthError, match="invalid_grant"):  # PKCE verifier must match
            await oauth.fetch_token(
                meta["token_endpoint"],
                code=authorize(url)["code"],
                code_verifier=secrets.token_urlsafe(48),
            )
    async with AsyncOAuth2Client(
        client_id=CLIENT_ID,
        client_secret="wrong",
        scope="openid",
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
    ) as oauth:
        url, _ = oauth.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier, login_hint="kim"
        )
        with pytest.raises(OAuthError, match="invalid_client"):
            await oauth.fetch_token(
                meta["token_endpoint"], code=authorize(url)["code"], code_verifier=verifier
            )


def test_fake_refuses_bad_authorization_requests(idp: ServerThread) -> None:
    base = f"{idp.url}/realms/{REALM}/protocol/openid-connect/auth"
    good = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK,
        "scope": "openid",
        "state": "s",
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
        "login_hint": "kim",
    }
    assert authorize(str(httpx.URL(base, params=good)))["state"] == "s"
    unknown = httpx.get(base, params={**good, "redirect_uri": "https://evil.example/cb"})
    assert unknown.status_code == 400  # shown, never redirected to an unregistered URI
    for change, error in (
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"scope": "email"}, "invalid_scope"),
        ({"login_hint": "nobody"}, "access_denied"),
    ):
        back = authorize(str(httpx.URL(base, params={**good, **change})))
        assert back["error"] == error


# -- our client --------------------------------------------------------------------------


async def test_keycloak_login_and_mapping(idp: ServerThread, client: OidcClient) -> None:
    who = await login(client, keycloak(idp), "kim")
    assert who.source == "oidc"
    assert who.subject == f"{idp.url}/realms/{REALM}|f7a0c1d2-kim"
    assert (who.email, who.name) == ("kim@example.org", "Kim Keycloak")
    assert who.groups == ("/finance", "/staff")
    mapping = RoleMapping.model_validate(
        {
            "role_rules": [
                {"claim": "realm_access.roles", "value": "sb-admin", "role": "tenant_admin"}
            ],
            "department_claim": "department",
        }
    )
    assert map_identity(who, mapping).role == "tenant_admin"
    assert map_identity(who, mapping).department == "Finance"


async def test_entra_login_with_tenant_check(idp: ServerThread, client: OidcClient) -> None:
    who = await login(client, entra(idp, allowed_tenant_ids=[ENTRA_TID]), "eve")
    assert who.claims["tid"] == ENTRA_TID
    assert who.claims["roles"] == ["Switchboard.User"]
    assert idp.app.state.provider.token_requests[-1]["auth_method"] == "post"
    mapping = RoleMapping.model_validate(
        {
            "role_rules": [{"claim": "roles", "value": "Switchboard.User", "role": "user"}],
            "department_claim": "extension_Department",
        }
    )
    mapped = map_identity(who, mapping)
    assert (mapped.role, mapped.department) == ("user", "Research")
    with pytest.raises(PermissionDenied, match="directory"):
        await login(client, entra(idp, allowed_tenant_ids=["another-tenant"]), "eve")


async def test_unverified_email_is_refused(idp: ServerThread, client: OidcClient) -> None:
    with pytest.raises(PermissionDenied, match="verified"):
        await login(client, keycloak(idp), "unverified")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"nonce": "not-the-nonce"}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "azp"),
        ({"exp": 1_000_000_000}, "exp"),
        ({"iat": None}, "iat"),
        ({"iss": "https://evil.example/realms/acme"}, "iss"),
    ],
)
async def test_bad_id_tokens_are_refused(
    idp: ServerThread, client: OidcClient, tamper: dict[str, Any], reason: str
) -> None:
    idp.app.state.tamper = {k: v for k, v in tamper.items() if v is not None}
    if reason == "iat":
        idp.app.state.tamper = {"iat": "yesterday"}
    with pytest.raises(AuthenticationFailed) as caught:
        await login(client, keycloak(idp), "kim")
    assert caught.value.code == "invalid_id_token"


async def test_unknown_signing_key_is_refused(idp: ServerThread, client: OidcClient) -> None:
    await login(client, keycloak(idp), "kim")  # JWKS cached
    idp.app.state.sign_with_foreign_key = True
    with pytest.raises(AuthenticationFailed, match="key the provider does not publish"):
        await login(client, keycloak(idp), "kim")


async def test_key_rotation_is_followed(idp: ServerThread, client: OidcClient) -> None:
    await login(client, keycloak(idp), "kim")  # JWKS cached with the old key only
    idp.app.state.provider.rotate_keys()
    who = await login(client, keycloak(idp), "kim")  # signed with a key id not seen before
    assert who.email == "kim@example.org"


async def test_pkce_mismatch_is_refused(idp: ServerThread, client: OidcClient) -> None:
    """A code obtained for one login, injected into another (an attacker's) login."""
    cfg = keycloak(idp)
    victim_url, _ = await client.begin(
        cfg, tenant="acme", provider="sso", redirect_uri=CALLBACK, return_path="/", login_hint="kim"
    )
    stolen = authorize(victim_url)["code"]
    _, attacker = await client.begin(
        cfg, tenant="acme", provider="sso", redirect_uri=CALLBACK, return_path="/"
    )
    with pytest.raises(AuthenticationFailed, match="invalid_grant"):
        await client.finish(cfg, CLIENT_SECRET, attacker, stolen)


async def test_wrong_client_secret_is_refused(idp: ServerThread, client: OidcClient) -> None:
    with pytest.raises(AuthenticationFailed, match="invalid_client"):
        await login(client, keycloak(idp), "kim", secret="wrong")


def test_login_state_is_sealed_and_expires() -> None:
    box = SecretBox([Fernet.generate_key()])
    state = LoginState("acme", "sso", "s", "n", "v" * 64, CALLBACK, "/console")
    sealed = state.seal(box)
    assert "v" * 64 not in sealed
    assert LoginState.open(box, sealed) == state
    with pytest.raises(AuthenticationFailed, match="start again"):
        LoginState.open(SecretBox([Fernet.generate_key()]), sealed)
    with pytest.raises(AuthenticationFailed, match="start again"):
        LoginState.open(box, sealed[:-4] + "AAAA")
    with pytest.raises(AuthenticationFailed, match="no login in progress"):
        LoginState.open(box, None)

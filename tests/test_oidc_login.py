"""OIDC login against the fake provider (tests/fakes/oidc_provider.py), Keycloak- and
Entra-shaped: the fake checked by authlib as an independent client, then our client's
flow and every refusal (state, nonce, audience, expiry, unknown key, PKCE, issuer, azp)."""

from __future__ import annotations

import asyncio
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

from conftest import RunningGateway
from fakes import oidc_provider
from fakes.server import ServerThread
from switchboard.auth.external import ExternalIdentity
from switchboard.auth.identity_providers import OidcSettings, RoleMapping, map_identity
from switchboard.auth.oidc import LoginState, OidcClient
from switchboard.auth.secretbox import SecretBox
from switchboard.errors import AuthenticationFailed, PermissionDenied, UpstreamUnavailable
from switchboard.platform import Platform
from switchboard.store import Database

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
        home_tenant=ENTRA_TID,
    ),
    "guest": oidc_provider.User(
        sub="BBBB-guest",
        email="guest@fabrikam.example",
        name="Guest Elsewhere",
        roles=["Switchboard.User"],
        home_tenant="72f988bf-0000-4000-8000-000000000000",
    ),
    "unverified": oidc_provider.User(
        sub="u-1", email="u@example.org", name="U", email_verified=False
    ),
    # In more groups than fit in an Entra token: the last one makes them a tenant admin.
    "many": oidc_provider.User(
        sub="CCCC-many",
        email="many@contoso.example",
        name="Many Groups",
        groups=[f"00000000-0000-4000-8000-{i:012d}" for i in range(250)],
        home_tenant=ENTRA_TID,
    ),
}
ADMINS_GROUP = f"00000000-0000-4000-8000-{249:012d}"
GRAPH_SCOPES = ["openid", "email", "profile", "https://graph.microsoft.com/GroupMember.Read.All"]


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


async def test_entra_multi_tenant_issuer(idp: ServerThread, client: OidcClient) -> None:
    """/organizations: the discovery document names a {tenantid} template, each token its
    user's directory; only the allowed directories get in."""
    cfg = OidcSettings(
        issuer=f"{idp.url}/organizations/v2.0",
        client_id=CLIENT_ID,
        allowed_tenant_ids=[ENTRA_TID],
    )
    who = await login(client, cfg, "eve")
    assert who.subject.startswith(f"{idp.url}/{ENTRA_TID}/v2.0|")
    with pytest.raises(PermissionDenied, match="directory"):
        await login(client, cfg, "guest")
    idp.app.state.tamper = {"iss": f"{idp.url}/72f988bf-0000-4000-8000-000000000000/v2.0"}
    with pytest.raises(AuthenticationFailed, match="iss"):  # iss and tid must agree
        await login(client, cfg, "eve")


async def test_entra_group_overage_reads_the_groups_from_graph(
    idp: ServerThread, client: OidcClient
) -> None:
    """Over 200 groups, Entra sends a claim source instead of the groups: they are read from
    Microsoft Graph with the sign-in's access token, and the role rules see all of them."""
    cfg = entra(idp, graph_url=f"{idp.url}/graph", scopes=GRAPH_SCOPES)
    who = await login(client, cfg, "many")
    assert who.claims["_claim_names"] == {"groups": "src1"}  # the token held no groups
    assert len(who.groups) == 250
    assert who.groups[-1] == ADMINS_GROUP
    assert idp.app.state.provider.graph_requests[-1] == {"securityEnabledOnly": False}
    mapping = RoleMapping.model_validate(
        {"role_rules": [{"value": ADMINS_GROUP, "role": "tenant_admin"}], "default_role": "user"}
    )
    assert map_identity(who, mapping).role == "tenant_admin"
    few = await login(client, cfg, "eve")  # groups in the token: Graph is not asked
    assert few.groups == tuple(USERS["eve"].groups)
    assert len(idp.app.state.provider.graph_requests) == 1


async def test_entra_group_overage_without_the_graph_permission_is_refused(
    idp: ServerThread, client: OidcClient
) -> None:
    """Mapped as if in no group, an admin would silently become a plain user (or nobody):
    the sign-in is refused and says what to grant instead."""
    cfg = entra(idp, graph_url=f"{idp.url}/graph")  # no GroupMember.Read.All scope
    with pytest.raises(AuthenticationFailed, match=r"GroupMember\.Read\.All") as err:
        await login(client, cfg, "many")
    assert err.value.code == "oidc_groups_unavailable"
    idp.app.state.tamper = {"hasgroups": True}  # the implicit flow's overage flag
    with pytest.raises(AuthenticationFailed, match="too many groups"):
        await login(client, cfg, "eve")


async def test_entra_group_overage_with_graph_down(idp: ServerThread, client: OidcClient) -> None:
    cfg = entra(idp, graph_url="http://127.0.0.1:9", scopes=GRAPH_SCOPES)  # nothing listens
    with pytest.raises(UpstreamUnavailable, match="Microsoft Graph"):
        await login(client, cfg, "many")


def test_graph_url_must_be_https() -> None:
    with pytest.raises(ValueError, match="https"):
        OidcSettings(issuer="https://login.example", client_id="x", graph_url="http://graph.ms")


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


# -- through the gateway: a browser-like client following redirects -----------------------


KEYCLOAK_MAPPING = {
    "role_rules": [
        {"claim": "realm_access.roles", "value": "sb-admin", "role": "tenant_admin"},
        {
            "claim": f"resource_access.{CLIENT_ID}.roles",
            "value": "dept-admin",
            "role": "department_admin",
        },
    ],
    "department_claim": "department",
}
ENTRA_MAPPING = {
    "role_rules": [{"claim": "roles", "value": "Switchboard.User", "role": "user"}],
    "department_claim": "extension_Department",
}


def add_provider(
    gw: RunningGateway,
    idp: ServerThread,
    style: str = "keycloak",
    mapping: dict[str, Any] | None = None,
    **extra: Any,
) -> tuple[str, str]:
    """A tenant with one OIDC provider registered at the fake; (tenant slug, provider name)."""
    slug = f"oidc-{secrets.token_hex(3)}"
    assert gw.admin("POST", "/admin/v1/tenants", json={"slug": slug}).status_code == 201
    if style == "keycloak":
        settings: dict[str, Any] = {
            "kind": "oidc",
            "issuer": f"{idp.url}/realms/{REALM}",
            "client_id": CLIENT_ID,
        }
        mapping = mapping or KEYCLOAK_MAPPING
    else:
        settings = {
            "kind": "oidc",
            "issuer": f"{idp.url}/{ENTRA_TID}/v2.0",
            "client_id": CLIENT_ID,
            "token_auth_method": "client_secret_post",
            "allowed_tenant_ids": [ENTRA_TID],
        }
        mapping = mapping or ENTRA_MAPPING
    created = gw.admin(
        "POST",
        f"/admin/v1/tenants/{slug}/identity-providers",
        json={
            "name": style,
            "settings": {**settings, **extra},
            "mapping": mapping,
            "secret": CLIENT_SECRET,
        },
    )
    assert created.status_code == 201, created.text
    assert CLIENT_SECRET not in created.text
    redirect_uri = created.json()["redirect_uri"]
    assert redirect_uri == f"{gw.url}/auth/v1/oidc/{slug}/{style}/callback"
    idp.app.state.provider.clients[CLIENT_ID].redirect_uris.append(redirect_uri)
    return slug, style


def browser() -> httpx.Client:
    return httpx.Client(follow_redirects=True, timeout=10)


def sign_in(
    gw: RunningGateway, slug: str, name: str, user: str, client: httpx.Client, **query: str
) -> httpx.Response:
    return client.get(
        f"{gw.url}/auth/v1/oidc/{slug}/{name}/start", params={"login_hint": user, **query}
    )


def collect(gw: RunningGateway, client: httpx.Client) -> httpx.Response:
    return client.post(gw.url + "/auth/v1/oidc/session")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("style", "user", "role", "department"),
    [("keycloak", "kim", "tenant_admin", "Finance"), ("entra", "eve", "user", "Research")],
)
def test_full_flow_through_the_gateway(
    gateway: RunningGateway,
    idp: ServerThread,
    style: str,
    user: str,
    role: str,
    department: str,
) -> None:
    slug, name = add_provider(gateway, idp, style)
    with browser() as client:
        landed = sign_in(gateway, slug, name, user, client, return_to="/console/?tab=chat")
        assert [r.status_code for r in landed.history] == [302, 302, 303]
        assert str(landed.url) == f"{gateway.url}/console/?tab=chat"
        assert "code=" not in str(landed.url)
        assert "access_token" not in str(landed.url)
        tokens = collect(gateway, client)
        assert tokens.status_code == 200, tokens.text
        assert tokens.headers["cache-control"] == "no-store"
        body = tokens.json()
        assert body["user"]["role"] == role
        assert body["user"]["source"] == "oidc"
        assert collect(gateway, client).status_code == 401  # collected once
    me = httpx.get(
        gateway.url + "/auth/v1/me",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=10,
    )
    assert me.status_code == 200, me.text
    assert me.json()["external_subject"].endswith("|" + USERS[user].sub)
    dept = asyncio.run(department_name(gateway, slug, me.json()["department_id"]))
    assert dept == department


@pytest.mark.slow
def test_entra_group_overage_through_the_gateway(
    gateway: RunningGateway, idp: ServerThread
) -> None:
    mapping = {"role_rules": [{"value": ADMINS_GROUP, "role": "tenant_admin"}]}
    slug, name = add_provider(
        gateway, idp, "entra", mapping, graph_url=f"{idp.url}/graph", scopes=GRAPH_SCOPES
    )
    with browser() as client:
        sign_in(gateway, slug, name, "many", client)
        tokens = collect(gateway, client)
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["user"]["role"] == "tenant_admin"


@pytest.mark.slow
def test_default_return_path_and_login_options(gateway: RunningGateway, idp: ServerThread) -> None:
    slug, name = add_provider(gateway, idp, return_path="/welcome")
    with browser() as client:
        landed = sign_in(gateway, slug, name, "kim", client)
        assert str(landed.url) == f"{gateway.url}/welcome"
    options = httpx.get(f"{gateway.url}/auth/v1/tenants/{slug}/identity-providers").json()
    assert options["data"] == [
        {
            "name": name,
            "kind": "oidc",
            "display_name": name,
            "start_url": f"/auth/v1/oidc/{slug}/{name}/start",
        }
    ]


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "evil"]
)
@pytest.mark.slow
def test_no_open_redirect(gateway: RunningGateway, idp: ServerThread, target: str) -> None:
    slug, name = add_provider(gateway, idp)
    with browser() as client:
        answer = sign_in(gateway, slug, name, "kim", client, return_to=target)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "return_to"
    assert not answer.history


def callback_url(gw: RunningGateway, slug: str, name: str, client: httpx.Client) -> str:
    """Start a login and let the provider consent; the callback URL, not yet visited."""
    start = client.get(
        f"{gw.url}/auth/v1/oidc/{slug}/{name}/start",
        params={"login_hint": "kim"},
        follow_redirects=False,
    )
    assert start.status_code == 302
    consent = client.get(start.headers["location"], follow_redirects=False)
    assert consent.status_code == 302
    return str(consent.headers["location"])


def refused(answer: httpx.Response, code: str) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == code
    assert "sb_oidc_session" not in answer.cookies


@pytest.mark.slow
def test_bad_state_is_refused(gateway: RunningGateway, idp: ServerThread) -> None:
    slug, name = add_provider(gateway, idp)
    with browser() as client:
        url = callback_url(gateway, slug, name, client)
        forged = httpx.URL(url).copy_set_param("state", "forged")
        refused(client.get(forged, follow_redirects=False), "state_mismatch")
        missing = httpx.URL(url).copy_remove_param("state")
        refused(client.get(missing, follow_redirects=False), "state_mismatch")
    with browser() as stranger:  # the callback in a browser that did not start the login
        refused(stranger.get(url, follow_redirects=False), "login_state_missing")
    with browser() as client:
        url = callback_url(gateway, slug, name, client)
        cookie = client.cookies.get("sb_oidc_state")
        assert cookie is not None
        client.cookies.set("sb_oidc_state", cookie[:-6] + "AAAAAA", path="/auth/v1/oidc/")
        refused(client.get(url, follow_redirects=False), "login_state_invalid")


@pytest.mark.parametrize(
    "tamper",
    [
        {"nonce": "not-the-nonce"},
        {"aud": "another-client"},
        {"exp": 1_000_000_000},
        "foreign-key",
    ],
)
@pytest.mark.slow
def test_bad_id_tokens_are_refused_by_the_gateway(
    gateway: RunningGateway, idp: ServerThread, tamper: dict[str, Any] | str
) -> None:
    slug, name = add_provider(gateway, idp)
    if tamper == "foreign-key":
        idp.app.state.sign_with_foreign_key = True
    else:
        idp.app.state.tamper = tamper
    with browser() as client:
        refused(sign_in(gateway, slug, name, "kim", client), "invalid_id_token")


@pytest.mark.slow
def test_pkce_mismatch_is_refused_by_the_gateway(
    gateway: RunningGateway, idp: ServerThread
) -> None:
    """The victim's code, injected into the attacker's own login (state and cookie valid)."""
    slug, name = add_provider(gateway, idp)
    with browser() as victim:
        stolen = httpx.URL(callback_url(gateway, slug, name, victim)).params["code"]
    with browser() as attacker:
        own = httpx.URL(callback_url(gateway, slug, name, attacker))
        injected = own.copy_set_param("code", stolen)
        answer = attacker.get(injected, follow_redirects=False)
    refused(answer, "oidc_refused")
    assert "invalid_grant" in answer.json()["error"]["message"]


@pytest.mark.slow
def test_a_code_works_once(gateway: RunningGateway, idp: ServerThread) -> None:
    slug, name = add_provider(gateway, idp)
    with browser() as client:
        url = callback_url(gateway, slug, name, client)
        cookie = client.cookies.get("sb_oidc_state")
        first = client.get(url, follow_redirects=False)
        assert first.status_code == 303
        client.cookies.set("sb_oidc_state", str(cookie), path="/auth/v1/oidc/")  # replayed
        refused(client.get(url, follow_redirects=False), "oidc_refused")


@pytest.mark.slow
def test_provider_error_and_unmapped_user(gateway: RunningGateway, idp: ServerThread) -> None:
    slug, name = add_provider(gateway, idp)
    with browser() as client:
        refused(sign_in(gateway, slug, name, "nobody", client), "oidc_refused")
    with browser() as client:  # eve has no Keycloak realm role this mapping knows
        answer = sign_in(gateway, slug, name, "eve", client)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "no_mapped_role"


@pytest.mark.slow
def test_admin_api_scoping(gateway: RunningGateway, idp: ServerThread) -> None:
    """kim signs in as tenant admin of A: she may manage A's providers, not B's; a plain
    user may manage none; secrets are never returned."""
    slug_a, name = add_provider(gateway, idp)
    slug_b, _ = add_provider(gateway, idp)
    with browser() as client:
        sign_in(gateway, slug_a, name, "kim", client)
        kim = collect(gateway, client).json()["access_token"]
    as_kim = {"Authorization": f"Bearer {kim}"}
    own = httpx.get(f"{gateway.url}/admin/v1/tenants/{slug_a}/identity-providers", headers=as_kim)
    assert own.status_code == 200, own.text
    assert CLIENT_SECRET not in own.text
    assert own.json()["data"][0]["secret_set"] is True
    for method in ("GET", "DELETE"):
        other = httpx.request(
            method,
            f"{gateway.url}/admin/v1/tenants/{slug_b}/identity-providers/{name}",
            headers=as_kim,
        )
        assert other.status_code == 403, other.text
    tried = gateway.admin("GET", "/admin/v1/audit", params={"action": "identity_provider."})
    denied = [e for e in tried.json()["data"] if e["outcome"] == "denied"]
    assert denied[0]["action"] == "identity_provider.delete"
    assert denied[0]["actor_role"] == "tenant_admin"
    slug_c, entra_name = add_provider(gateway, idp, "entra")
    with browser() as client:
        sign_in(gateway, slug_c, entra_name, "eve", client)
        eve = collect(gateway, client).json()["access_token"]
    as_eve = {"Authorization": f"Bearer {eve}"}
    plain_user = httpx.get(
        f"{gateway.url}/admin/v1/tenants/{slug_c}/identity-providers", headers=as_eve
    )
    assert plain_user.status_code == 403
    gone = httpx.delete(
        f"{gateway.url}/admin/v1/tenants/{slug_a}/identity-providers/{name}", headers=as_kim
    )
    assert gone.status_code == 204
    assert httpx.get(f"{gateway.url}/auth/v1/tenants/{slug_a}/identity-providers").json() == {
        "data": []
    }


@pytest.mark.slow
def test_secret_update_is_write_only(gateway: RunningGateway, idp: ServerThread) -> None:
    slug, name = add_provider(gateway, idp)
    path = f"/admin/v1/tenants/{slug}/identity-providers/{name}"
    doc = gateway.admin("GET", path).json()
    body = {k: doc[k] for k in ("display_name", "enabled", "settings", "mapping")}
    kept = gateway.admin("PUT", path, json=body)
    assert kept.json()["secret_set"] is True
    with browser() as client:  # the kept secret still works
        assert str(sign_in(gateway, slug, name, "kim", client).url) == gateway.url + "/"
        assert collect(gateway, client).status_code == 200
    wrong = gateway.admin("PUT", path, json={**body, "secret": "wrong-secret"})
    assert wrong.json()["secret_set"] is True
    assert "wrong-secret" not in wrong.text
    with browser() as client:
        refused(sign_in(gateway, slug, name, "kim", client), "oidc_refused")
    bad = gateway.admin("PUT", path, json={**body, "settings": {"kind": "ldap"}})
    assert bad.status_code == 400


async def department_name(gw: RunningGateway, slug: str, department_id: str) -> str:
    db = Database(gw.settings.resolved_database_url())
    try:
        platform = Platform(db)
        tenant = await platform.tenants.get(slug)
        return (await platform.departments.get(tenant.id, department_id)).name
    finally:
        await db.dispose()

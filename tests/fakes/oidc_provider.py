"""A small OpenID Connect provider, served for real on a loopback port.

Two issuer shapes on one server, each with its own discovery document:

* Keycloak: ``/realms/<realm>`` (endpoints under ``/protocol/openid-connect/``); ID tokens
  carry ``realm_access.roles``, ``resource_access.<client>.roles``, ``groups`` (paths like
  ``/finance``) and ``azp``;
* Microsoft Entra ID: ``/<tenant id>/v2.0`` (endpoints ``/<tid>/oauth2/v2.0/...``, keys at
  ``/<tid>/discovery/v2.0/keys``); ID tokens carry ``tid``, ``oid``, ``roles`` (app roles),
  ``groups`` (object ids) and ``ver: "2.0"``. Under ``/organizations`` (or ``/common``) the
  discovery document names the issuer ``.../{tenantid}/v2.0`` and each token's ``iss`` and
  ``tid`` carry the user's ``home_tenant``, as Entra's multi-tenant endpoints do.

``/authorize`` consents at once for the user named by ``login_hint`` (or
``app.state.default_user``) and redirects back with a code. It requires ``response_type=code``,
a registered client and exact redirect URI, the ``openid`` scope, and PKCE with S256.
``/token`` checks the client's secret (``client_secret_basic`` or ``client_secret_post``), the
code (unknown, used before, expired, or issued to another client or redirect URI: all
``invalid_grant``; a code is good once), and the PKCE ``code_verifier`` against the challenge.
ID tokens are RS256-signed with the key JWKS lists first.

Entra's group overage: a user in more than 200 groups gets no ``groups`` claim but
``_claim_names``/``_claim_sources`` pointing at the (retired) Azure AD Graph, as Entra sends them.
A small Microsoft Graph answers ``POST /graph/v1.0/me/getMemberGroups`` for the access tokens
this provider issued: the user's group ids when the token's scope holds
``GroupMember.Read.All`` (or ``Directory.Read.All``), else Graph's 403
``Authorization_RequestDenied``; 401 ``InvalidAuthenticationToken`` for any other token.

Switches on ``app.state``: ``tamper`` (claims to override in the next ID tokens, e.g.
``{"aud": "other"}``, ``{"exp": 0}``, ``{"nonce": "x"}``), ``sign_with_foreign_key`` (sign with
a key JWKS does not list), and `rotate_keys()` (a new signing key, published first).
Records: ``token_requests`` (each /token form, client auth method included).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode

import orjson
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

CODE_TTL = 60
ENTRA_GROUPS_IN_TOKEN = 200  # more, and Entra sends a group overage claim instead
GRAPH_GROUP_SCOPES = ("GroupMember.Read.All", "Directory.Read.All")
MULTI_TENANT = ("common", "organizations")  # Entra's endpoints for any directory
ID_TOKEN_TTL = 300


@dataclass
class Client:
    secret: str
    redirect_uris: list[str] = field(default_factory=list)


@dataclass
class User:
    sub: str
    email: str
    name: str
    groups: list[str] = field(default_factory=list)  # Keycloak paths, or Entra object ids
    roles: list[str] = field(default_factory=list)  # realm roles (Keycloak) / app roles (Entra)
    client_roles: list[str] = field(default_factory=list)  # Keycloak resource_access roles
    department: str | None = None
    email_verified: bool | None = True
    home_tenant: str | None = None  # Entra: the user's directory, on /common, /organizations


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    nonce: str | None
    challenge: str
    issuer: str
    style: str
    expires: float
    scope: str = ""
    used: bool = False


def _json(body: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return _json({"error": error, "error_description": description}, status)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _new_key() -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
    key.ensure_kid()
    return key


class _Provider:
    def __init__(self, clients: dict[str, Client], users: dict[str, User]) -> None:
        self.clients = clients
        self.users = users
        self.keys: list[RSAKey] = [_new_key()]
        self.foreign = _new_key()
        self.codes: dict[str, _Code] = {}
        self.token_requests: list[dict[str, str]] = []
        self.access_tokens: dict[str, tuple[str, str]] = {}  # token -> (user, scope)
        self.graph_requests: list[dict[str, Any]] = []

    # -- paths -------------------------------------------------------------------------------

    @staticmethod
    def issuer(request: Request) -> tuple[str, str]:
        base = str(request.base_url).rstrip("/")
        params = request.path_params
        if "realm" in params:
            return f"{base}/realms/{params['realm']}", "keycloak"
        return f"{base}/{params['tid']}/v2.0", "entra"

    def discovery(self, request: Request) -> Response:
        issuer, style = self.issuer(request)
        if style == "keycloak":
            endpoints = {
                "authorization_endpoint": f"{issuer}/protocol/openid-connect/auth",
                "token_endpoint": f"{issuer}/protocol/openid-connect/token",
                "jwks_uri": f"{issuer}/protocol/openid-connect/certs",
            }
        else:
            base = issuer.removesuffix("/v2.0")
            endpoints = {
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
            }
        if style == "entra" and request.path_params["tid"] in MULTI_TENANT:
            # Entra names a template here; each token's iss carries the user's directory.
            issuer = f"{str(request.base_url).rstrip('/')}/{{tenantid}}/v2.0"
        return _json(
            {
                "issuer": issuer,
                **endpoints,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public" if style == "keycloak" else "pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code"],
            }
        )

    def jwks(self, _request: Request) -> Response:
        return _json(KeySet(list(self.keys)).as_dict(private=False))

    # -- authorization endpoint --------------------------------------------------------------

    def authorize(self, request: Request) -> Response:
        q = request.query_params
        client = self.clients.get(q.get("client_id", ""))
        redirect_uri = q.get("redirect_uri", "")
        if client is None or redirect_uri not in client.redirect_uris:
            # Never redirect to an unverified URI: show the error here (RFC 6749 §4.1.2.1).
            return _oauth_error("invalid_request", "unknown client or redirect_uri")
        state = q.get("state")

        def back(**params: str) -> Response:
            if state is not None:
                params["state"] = state
            return RedirectResponse(f"{redirect_uri}?{urlencode(params)}", status_code=302)

        if q.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if "openid" not in q.get("scope", "").split():
            return back(error="invalid_scope", error_description="openid is required")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return back(error="invalid_request", error_description="PKCE S256 is required")
        login = q.get("login_hint") or getattr(request.app.state, "default_user", None)
        if login not in self.users:
            return back(error="access_denied", error_description="no such user")
        issuer, style = self.issuer(request)
        code = secrets.token_urlsafe(24)
        self.codes[code] = _Code(
            client_id=q["client_id"],
            redirect_uri=redirect_uri,
            user=login,
            nonce=q.get("nonce"),
            challenge=q["code_challenge"],
            issuer=issuer,
            style=style,
            expires=time.time() + CODE_TTL,
            scope=q.get("scope", ""),
        )
        return back(code=code)

    # -- token endpoint ----------------------------------------------------------------------

    def _client_auth(self, request: Request, form: dict[str, str]) -> tuple[str | None, str]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            raw = base64.b64decode(header[6:]).decode()
            client_id, _, secret = raw.partition(":")
            return self._check_client(unquote_plus(client_id), unquote_plus(secret)), "basic"
        return self._check_client(form.get("client_id", ""), form.get("client_secret", "")), "post"

    def _check_client(self, client_id: str, secret: str) -> str | None:
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.secret, secret):
            return None
        return client_id

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, method = self._client_auth(request, form)
        self.token_requests.append({**form, "auth_method": method})
        if client_id is None:
            return _oauth_error("invalid_client", "client authentication failed", 401)
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "only authorization_code")
        grant = self.codes.get(form.get("code", ""))
        if grant is None or grant.expires < time.time():
            return _oauth_error("invalid_grant", "unknown or expired code")
        if grant.used:
            return _oauth_error("invalid_grant", "code already used")
        grant.used = True  # even when the checks below fail: a code is tried once
        if grant.client_id != client_id or grant.redirect_uri != form.get("redirect_uri"):
            return _oauth_error("invalid_grant", "code was issued to another client or URI")
        verifier = form.get("code_verifier", "")
        if not verifier or not secrets.compare_digest(s256(verifier), grant.challenge):
            return _oauth_error("invalid_grant", "PKCE verification failed")
        access_token = secrets.token_urlsafe(32)
        self.access_tokens[access_token] = (grant.user, grant.scope)
        return _json(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": grant.scope,
                "id_token": self.id_token(request, grant),
            }
        )

    def id_token(self, request: Request, grant: _Code) -> str:
        user = self.users[grant.user]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": grant.issuer,
            "sub": user.sub,
            "aud": grant.client_id,
            "exp": now + ID_TOKEN_TTL,
            "iat": now,
            "auth_time": now,
            "name": user.name,
            "email": user.email,
            "preferred_username": user.email,
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        if grant.style == "keycloak":
            claims.update(
                azp=grant.client_id,
                realm_access={"roles": ["offline_access", *user.roles]},
                resource_access={grant.client_id: {"roles": user.client_roles}},
                groups=user.groups,
            )
            if user.email_verified is not None:
                claims["email_verified"] = user.email_verified
            if user.department:
                claims["department"] = user.department
        else:
            tid = grant.issuer.rsplit("/", 2)[-2]
            if tid in MULTI_TENANT:
                claims["iss"] = grant.issuer.replace(f"/{tid}/", f"/{user.home_tenant}/")
                tid = str(user.home_tenant)
            claims.update(tid=tid, oid=user.sub, ver="2.0", roles=user.roles, groups=user.groups)
            if len(user.groups) > ENTRA_GROUPS_IN_TOKEN:
                del claims["groups"]
                endpoint = f"https://graph.windows.net/{tid}/users/{user.sub}/getMemberObjects"
                claims["_claim_names"] = {"groups": "src1"}
                claims["_claim_sources"] = {"src1": {"endpoint": endpoint}}
            if user.department:
                claims["extension_Department"] = user.department
        claims.update(getattr(request.app.state, "tamper", {}))
        key = self.foreign if request.app.state.sign_with_foreign_key else self.keys[0]
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    def rotate_keys(self) -> None:
        self.keys.insert(0, _new_key())

    # -- Microsoft Graph ---------------------------------------------------------------------

    async def member_groups(self, request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        self.graph_requests.append(body)
        header = request.headers.get("authorization", "")
        found = self.access_tokens.get(header.removeprefix("Bearer "))
        if not header.startswith("Bearer ") or found is None:
            error = {"code": "InvalidAuthenticationToken", "message": "Access token is empty."}
            return _json({"error": error}, 401)
        login, scope = found
        if not any(s.endswith(g) for s in scope.split() for g in GRAPH_GROUP_SCOPES):
            error = {
                "code": "Authorization_RequestDenied",
                "message": "Insufficient privileges to complete the operation.",
            }
            return _json({"error": error}, 403)
        return _json({"value": self.users[login].groups})


def create_app(clients: dict[str, Client], users: dict[str, User]) -> Starlette:
    provider = _Provider(clients, users)
    keycloak = "/realms/{realm}"
    entra = "/{tid}"
    app = Starlette(
        routes=[
            Route(f"{keycloak}/.well-known/openid-configuration", provider.discovery),
            Route(f"{keycloak}/protocol/openid-connect/auth", provider.authorize),
            Route(f"{keycloak}/protocol/openid-connect/token", provider.token, methods=["POST"]),
            Route(f"{keycloak}/protocol/openid-connect/certs", provider.jwks),
            Route(f"{entra}/v2.0/.well-known/openid-configuration", provider.discovery),
            Route(f"{entra}/oauth2/v2.0/authorize", provider.authorize),
            Route(f"{entra}/oauth2/v2.0/token", provider.token, methods=["POST"]),
            Route(f"{entra}/discovery/v2.0/keys", provider.jwks),
            Route("/graph/v1.0/me/getMemberGroups", provider.member_groups, methods=["POST"]),
        ]
    )
    app.state.provider = provider
    app.state.tamper = {}
    app.state.sign_with_foreign_key = False
    app.state.default_user = None
    return app

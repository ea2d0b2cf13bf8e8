"""A tenant's identity providers (LDAP/AD directories, OIDC issuers) and how their people map
to Switchboard roles and departments.

One provider is a document: what to connect to (`LdapSettings` or `OidcSettings`) and the
`RoleMapping` rules. Its secret (the LDAP service-account password or the OIDC client
secret) is kept apart, encrypted at rest, and never returned by the API.

Mapping: the rules are tried in the order given (the first that matches wins). A rule names a
claim path and a value: ``groups`` (LDAP group DNs or their CNs; OIDC ``groups``),
``roles`` (Entra app roles), ``realm_access.roles`` or ``resource_access.<client>.roles``
(Keycloak), or any other claim. When no role rule matches, ``default_role`` applies; when that
is unset the login is refused. A department comes from the first matching department rule,
else from the value of ``department_claim``, else ``default_department`` (or none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from switchboard.auth.entra_groups import GRAPH_URL
from switchboard.auth.external import ExternalIdentity
from switchboard.errors import PermissionDenied

# Roles an outside provider may grant. `platform_admin` is deliberately not among them: a
# tenant's directory must never be able to make someone an operator of the whole platform.
MappedRole = Literal["tenant_admin", "department_admin", "user"]
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
GROUPS = "groups"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleRule(_Strict):
    claim: str = Field(default=GROUPS, min_length=1, max_length=200)
    value: str = Field(min_length=1, max_length=1000)
    role: MappedRole


class DepartmentRule(_Strict):
    claim: str = Field(default=GROUPS, min_length=1, max_length=200)
    value: str = Field(min_length=1, max_length=1000)
    department: str = Field(min_length=1, max_length=200)


class RoleMapping(_Strict):
    role_rules: list[RoleRule] = Field(default_factory=list, max_length=200)
    department_rules: list[DepartmentRule] = Field(default_factory=list, max_length=200)
    department_claim: str | None = Field(default=None, max_length=200)
    default_role: MappedRole | None = None
    default_department: str | None = Field(default=None, max_length=200)


def _check_ldap_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ValueError("an LDAP server URL looks like ldap://host:389 or ldaps://host:636")
    return url


class LdapSettings(_Strict):
    kind: Literal["ldap"] = "ldap"
    urls: list[str] = Field(min_length=1, max_length=10)
    start_tls: bool = False
    tls_verify: bool = True
    ca_file: str | None = None
    # Direct bind: the user's bind name from a template, e.g. "uid={username},ou=people,
    # dc=example,dc=org" or, on Active Directory, "{username}@corp.example".
    bind_dn_template: str | None = None
    # Search-then-bind: a service account finds the user's DN first (password kept apart).
    bind_dn: str | None = None
    user_search_base: str = Field(min_length=1)
    user_filter: str = "(uid={username})"
    email_attribute: str = "mail"
    name_attribute: str = "cn"
    # Groups: read the user's memberOf attribute, or search groups that list the user.
    group_source: Literal["member_of", "search"] = "member_of"
    member_of_attribute: str = "memberOf"
    group_search_base: str | None = None
    group_filter: str = "(&(objectClass=groupOfNames)(member={user_dn}))"
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    # More entry attributes to read into the identity's claims (e.g. "department", for
    # `RoleMapping.department_claim`).
    extra_attributes: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [_check_ldap_url(u) for u in value]

    @model_validator(mode="after")
    def _one_bind_mode(self) -> LdapSettings:
        if (self.bind_dn_template is None) == (self.bind_dn is None):
            raise ValueError("give either bind_dn_template (direct bind) or bind_dn (search)")
        if self.bind_dn_template is not None and "{username}" not in self.bind_dn_template:
            raise ValueError("bind_dn_template must contain {username}")
        if "{username}" not in self.user_filter:
            raise ValueError("user_filter must contain {username}")
        if self.group_source == "search" and not self.group_search_base:
            raise ValueError("group_source 'search' needs group_search_base")
        return self


class OidcSettings(_Strict):
    kind: Literal["oidc"] = "oidc"
    issuer: str = Field(min_length=1, max_length=500)
    client_id: str = Field(min_length=1, max_length=500)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    email_claim: str = "email"
    name_claim: str = "name"
    groups_claim: str = GROUPS
    # Entra ID multi-tenant apps: the directory (tid) ids allowed to sign in.
    allowed_tenant_ids: list[str] = Field(default_factory=list)
    # Where the browser goes after login: a path on this gateway's own origin.
    return_path: str = "/"
    # Entra ID: where a user's groups are read when there are too many for the token
    # (national clouds: https://graph.microsoft.us, https://microsoftgraph.chinacloudapi.cn).
    graph_url: str = GRAPH_URL

    @field_validator("issuer", "graph_url")
    @classmethod
    def _https_url(cls, value: str) -> str:
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)
        ):
            raise ValueError("must be an https URL (http only on this machine's loopback)")
        return value.rstrip("/")

    @field_validator("return_path")
    @classmethod
    def _local_path(cls, value: str) -> str:
        return local_path(value)

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        return value if "openid" in value else ["openid", *value]


def local_path(value: str) -> str:
    """A redirect target on our own origin: an absolute path, never '//host' or a URL."""
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x21 for c in value)
    ):
        raise ValueError("must be a path on this gateway, starting with a single '/'")
    return value


ProviderSettings = Annotated[LdapSettings | OidcSettings, Field(discriminator="kind")]


class ProviderDocument(_Strict):
    """What the admin API accepts and returns (without the secret)."""

    display_name: str | None = Field(default=None, max_length=200)
    enabled: bool = True
    settings: ProviderSettings
    mapping: RoleMapping = Field(default_factory=RoleMapping)


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    id: str
    tenant_id: str
    name: str
    document: ProviderDocument
    secret: str | None  # decrypted; never rendered

    @property
    def kind(self) -> str:
        return self.document.settings.kind


@dataclass(frozen=True, slots=True)
class MappedIdentity:
    identity: ExternalIdentity
    role: MappedRole
    department: str | None


def claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """The string values at a dotted claim path (``realm_access.roles``); [] when absent.

    A key that itself contains dots (``resource_access.my.client.roles``) is found too: at
    each level the longest key that prefixes the rest of the path wins."""
    node: Any = claims
    rest = path
    while rest:
        if not isinstance(node, dict):
            return []
        keys = sorted((k for k in node if isinstance(k, str)), key=len, reverse=True)
        key = next((k for k in keys if rest == k or rest.startswith(k + ".")), None)
        if key is None:
            return []
        node = node[key]
        rest = rest[len(key) + 1 :]
    if isinstance(node, str | int | bool):
        return [str(node)]
    if isinstance(node, list):
        return [str(v) for v in node if isinstance(v, str | int)]
    return []


def _group_names(dn: str) -> tuple[str, str]:
    """An LDAP group DN, normalised, and the value of its first RDN (its CN)."""
    normal = ",".join(part.strip() for part in dn.split(",")).lower()
    first = normal.split(",", 1)[0]
    return normal, first.split("=", 1)[-1]


def _matches(identity: ExternalIdentity, claim: str, value: str) -> bool:
    if identity.source == "ldap" and claim == GROUPS:
        wanted = value.lower()
        wanted_dn = _group_names(value)[0] if "=" in value else None
        for group in identity.groups:
            normal, cn = _group_names(group)
            if normal == wanted_dn or (wanted_dn is None and cn == wanted):
                return True
        return False
    values = claim_values(identity.claims, claim)
    if claim == GROUPS and not values:
        values = list(identity.groups)
    return value in values


def map_identity(identity: ExternalIdentity, mapping: RoleMapping) -> MappedIdentity:
    """Role and department for a proven identity; `PermissionDenied` when no rule grants a
    role and there is no default role."""
    role = next(
        (r.role for r in mapping.role_rules if _matches(identity, r.claim, r.value)),
        mapping.default_role,
    )
    if role is None:
        raise PermissionDenied(
            "your account is not in a group that may use this tenant", code="no_mapped_role"
        )
    department = next(
        (d.department for d in mapping.department_rules if _matches(identity, d.claim, d.value)),
        None,
    )
    if department is None and mapping.department_claim:
        found = claim_values(identity.claims, mapping.department_claim)
        department = found[0] if found else None
    return MappedIdentity(identity, role, department or mapping.default_department)

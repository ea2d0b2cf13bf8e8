"""Identity provider documents, their encrypted secrets, the store, and claim mapping."""

from __future__ import annotations

import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import select

from switchboard.auth.external import ExternalIdentity
from switchboard.auth.identity_providers import (
    OidcSettings,
    ProviderDocument,
    RoleMapping,
    claim_values,
    local_path,
    map_identity,
)
from switchboard.auth.secretbox import KEY_FILE, SecretBox, load_secret_box
from switchboard.errors import ConfigError, InvalidRequest, NotFound, PermissionDenied
from switchboard.settings import Settings
from switchboard.store import Database, TenantRepository
from switchboard.store.identity_providers import IdentityProviderRepository
from switchboard.store.schema import identity_providers

OIDC = ProviderDocument.model_validate(
    {
        "display_name": "Keycloak",
        "settings": {
            "kind": "oidc",
            "issuer": "https://sso.example.org/realms/acme/",
            "client_id": "switchboard",
        },
        "mapping": {"default_role": "user"},
    }
)


# -- the secret box -------------------------------------------------------------------------


def test_key_file_is_generated_once_with_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    box = load_secret_box(settings)
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = box.encrypt("client-secret-1")
    assert "client-secret-1" not in token
    again = load_secret_box(settings)  # a restart, or another worker: same key
    assert again.decrypt(token) == "client-secret-1"
    assert path.read_bytes() == path.read_bytes().strip() + b"\n"


def test_configured_key_wins_and_rotation_keeps_old_secrets(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = load_secret_box(Settings(data_dir=tmp_path, secret_key=old))
    token = before.encrypt("bind-password")
    assert not (tmp_path / KEY_FILE).exists()
    rotated = load_secret_box(Settings(data_dir=tmp_path, secret_key=f"{new}, {old}"))
    assert rotated.decrypt(token) == "bind-password"
    assert SecretBox([new.encode()]).decrypt(rotated.encrypt("x")) == "x"
    with pytest.raises(ConfigError, match="not the key"):
        SecretBox([new.encode()]).decrypt(token)


def test_bad_configured_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Fernet"):
        load_secret_box(Settings(data_dir=tmp_path, secret_key="not-a-key"))


def test_short_lived_tokens_expire() -> None:
    box = SecretBox([Fernet.generate_key()])
    token = box.encrypt("state")
    assert box.decrypt(token, ttl=60) == "state"
    key = Fernet.generate_key()
    aged = Fernet(key).encrypt_at_time(b"state", 1_000)  # made long ago
    with pytest.raises(ValueError, match="expired"):
        SecretBox([key]).decrypt(aged.decode(), ttl=60)
    assert SecretBox([key]).decrypt(aged.decode()) == "state"


# -- the store ------------------------------------------------------------------------------


async def test_store_round_trip_secret_encrypted_and_tenant_scoped(db: Database) -> None:
    tenants = TenantRepository(db)
    a = await tenants.create(f"a-{secrets.token_hex(3)}", usage_mode="hybrid")
    b = await tenants.create(f"b-{secrets.token_hex(3)}", usage_mode="hybrid")
    repo = IdentityProviderRepository(db, SecretBox([Fernet.generate_key()]))
    created = await repo.create(a.id, "keycloak", OIDC, "s3cret-client")
    assert created.document.settings.issuer == "https://sso.example.org/realms/acme"  # type: ignore[union-attr]

    async with db.engine.connect() as conn:
        raw = (
            await conn.execute(
                select(identity_providers.c.secret, identity_providers.c.document).where(
                    identity_providers.c.id == created.id
                )
            )
        ).one()
    assert "s3cret-client" not in raw.secret
    assert "s3cret-client" not in raw.document

    got = await repo.get(a.id, "keycloak")
    assert got.secret == "s3cret-client"
    assert got.document == OIDC
    with pytest.raises(NotFound):
        await repo.get(b.id, "keycloak")
    assert await repo.list(b.id) == []
    with pytest.raises(NotFound):
        await repo.delete(b.id, "keycloak")
    with pytest.raises(InvalidRequest, match="already"):
        await repo.create(a.id, "keycloak", OIDC, None)
    await repo.create(b.id, "keycloak", OIDC, None)  # the same name in another tenant

    renamed = OIDC.model_copy(update={"display_name": "SSO"})
    updated = await repo.update(a.id, "keycloak", renamed)  # secret left as it was
    assert (updated.document.display_name, updated.secret) == ("SSO", "s3cret-client")
    cleared = await repo.update(a.id, "keycloak", renamed, None)
    assert cleared.secret is None
    await repo.delete(a.id, "keycloak")
    assert [p.tenant_id for p in await repo.list(a.id)] == []
    assert [p.tenant_id for p in await repo.list(b.id)] == [b.id]


async def test_store_refuses_bad_names_and_kind_changes(db: Database) -> None:
    tenant = await TenantRepository(db).create(f"c-{secrets.token_hex(3)}", usage_mode="hybrid")
    repo = IdentityProviderRepository(db, SecretBox([Fernet.generate_key()]))
    with pytest.raises(InvalidRequest):
        await repo.create(tenant.id, "Bad Name", OIDC, None)
    await repo.create(tenant.id, "sso", OIDC, None)
    ldap = ProviderDocument.model_validate(
        {
            "settings": {
                "kind": "ldap",
                "urls": ["ldap://127.0.0.1:389"],
                "bind_dn_template": "uid={username},dc=x",
                "user_search_base": "dc=x",
            }
        }
    )
    with pytest.raises(InvalidRequest, match="kind"):
        await repo.update(tenant.id, "sso", ldap)


# -- documents ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"kind": "ldap", "urls": ["http://x"], "bind_dn": "cn=s", "user_search_base": "dc=x"},
        {"kind": "ldap", "urls": ["ldap://x"], "user_search_base": "dc=x"},  # no bind mode
        {
            "kind": "ldap",
            "urls": ["ldap://x"],
            "bind_dn": "cn=s",
            "bind_dn_template": "uid={username}",
            "user_search_base": "dc=x",
        },
        {
            "kind": "ldap",
            "urls": ["ldap://x"],
            "bind_dn_template": "uid=x",
            "user_search_base": "d",
        },
        {
            "kind": "ldap",
            "urls": ["ldap://x"],
            "bind_dn": "cn=s",
            "user_search_base": "dc=x",
            "group_source": "search",
        },
        {"kind": "oidc", "issuer": "ftp://x", "client_id": "c"},
        {"kind": "oidc", "issuer": "https://x", "client_id": "c", "return_path": "//evil.example"},
        {"kind": "oidc", "issuer": "https://x", "client_id": "c", "return_path": "https://e.x/"},
        {"kind": "oidc", "issuer": "https://x", "client_id": "c", "unknown": 1},
        {"kind": "saml"},
    ],
)
def test_bad_documents_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProviderDocument.model_validate({"settings": settings})


@pytest.mark.parametrize(
    "bad", ["//evil.example/x", "/\\evil.example", "https://e.x", "x", "/a\nb"]
)
def test_local_path_refuses_other_origins(bad: str) -> None:
    with pytest.raises(ValueError, match="path"):
        local_path(bad)


def test_openid_scope_is_always_requested() -> None:
    cfg = OidcSettings(issuer="https://x", client_id="c", scopes=["email"])
    assert cfg.scopes == ["openid", "email"]


# -- claim mapping --------------------------------------------------------------------------

ENTRA_CLAIMS: dict[str, object] = {
    "iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
    "tid": "9188040d-6c67-4c5b-b112-36a304b66dad",
    "roles": ["Switchboard.Admin"],
    "groups": ["0d6b4d5e-7a0e-4b8f-9a57-3b1f0c0c1a11", "5c1e3f2a-0000-4000-8000-000000000001"],
    "extension_Department": "Research",
}
KEYCLOAK_CLAIMS: dict[str, object] = {
    "realm_access": {"roles": ["offline_access", "sb-admin"]},
    "resource_access": {"switchboard": {"roles": ["dept-admin"]}, "my.app": {"roles": ["x"]}},
    "groups": ["/finance", "/staff"],
    "department": "Finance",
}


def oidc_identity(claims: Mapping[str, object]) -> ExternalIdentity:
    return ExternalIdentity(
        source="oidc", subject="iss|sub", email="p@example.org", claims=dict(claims)
    )


def test_claim_paths() -> None:
    assert claim_values(KEYCLOAK_CLAIMS, "realm_access.roles") == ["offline_access", "sb-admin"]
    assert claim_values(KEYCLOAK_CLAIMS, "resource_access.switchboard.roles") == ["dept-admin"]
    assert claim_values(KEYCLOAK_CLAIMS, "resource_access.my.app.roles") == ["x"]
    assert claim_values(KEYCLOAK_CLAIMS, "department") == ["Finance"]
    assert claim_values(KEYCLOAK_CLAIMS, "realm_access") == []
    assert claim_values(KEYCLOAK_CLAIMS, "nothing.here") == []
    assert claim_values({"email_verified": True}, "email_verified") == ["True"]


def test_entra_mapping_by_app_role_and_group_id() -> None:
    mapping = RoleMapping.model_validate(
        {
            "role_rules": [
                {"claim": "roles", "value": "Switchboard.Admin", "role": "tenant_admin"},
                {
                    "claim": "groups",
                    "value": "5c1e3f2a-0000-4000-8000-000000000001",
                    "role": "user",
                },
            ],
            "department_claim": "extension_Department",
        }
    )
    mapped = map_identity(oidc_identity(ENTRA_CLAIMS), mapping)
    assert (mapped.role, mapped.department) == ("tenant_admin", "Research")
    no_role = {**ENTRA_CLAIMS, "roles": []}
    assert map_identity(oidc_identity(no_role), mapping).role == "user"
    with pytest.raises(PermissionDenied):
        map_identity(oidc_identity({**no_role, "groups": []}), mapping)


def test_keycloak_mapping_by_realm_client_roles_and_groups() -> None:
    mapping = RoleMapping.model_validate(
        {
            "role_rules": [
                {"claim": "realm_access.roles", "value": "sb-admin", "role": "tenant_admin"},
                {
                    "claim": "resource_access.switchboard.roles",
                    "value": "dept-admin",
                    "role": "department_admin",
                },
            ],
            "department_rules": [{"value": "/finance", "department": "Finance Dept"}],
            "department_claim": "department",
        }
    )
    mapped = map_identity(oidc_identity(KEYCLOAK_CLAIMS), mapping)
    assert (mapped.role, mapped.department) == ("tenant_admin", "Finance Dept")
    fewer = {**KEYCLOAK_CLAIMS, "realm_access": {"roles": []}, "groups": []}
    mapped = map_identity(oidc_identity(fewer), mapping)
    assert (mapped.role, mapped.department) == ("department_admin", "Finance")

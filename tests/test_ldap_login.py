"""LDAP login against a real OpenLDAP slapd: direct bind, search-then-bind, memberOf and group
search, group -> role/department mapping, injection, the anonymous-bind trap, a dead server."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import RunningGateway
from fakes.slapd import GROUPS, PEOPLE, SERVICE_DN, Slapd
from switchboard.auth.external import ExternalIdentity
from switchboard.auth.identity_providers import LdapSettings, RoleMapping, map_identity
from switchboard.auth.ldap import ldap_login
from switchboard.errors import AuthenticationFailed, PermissionDenied, UpstreamUnavailable


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    with Slapd() as server:
        yield server


def direct(slapd: Slapd, **extra: Any) -> LdapSettings:
    return LdapSettings(
        urls=[slapd.url],
        bind_dn_template=f"uid={{username}},{PEOPLE}",
        user_search_base=PEOPLE,
        **extra,
    )


def searching(slapd: Slapd, **extra: Any) -> LdapSettings:
    return LdapSettings(urls=[slapd.url], bind_dn=SERVICE_DN, user_search_base=PEOPLE, **extra)


MAPPING = RoleMapping.model_validate(
    {
        "role_rules": [
            {"value": f"cn=sb-admins,{GROUPS}", "role": "tenant_admin"},
            {"value": "finance", "role": "department_admin"},
            {"value": "sb-users", "role": "user"},
        ],
        "department_rules": [
            {"value": "engineering", "department": "Engineering"},
            {"value": f"CN=Finance, {GROUPS.upper()}", "department": "Finance"},
        ],
    }
)


async def test_direct_bind_reads_entry_and_memberof(slapd: Slapd) -> None:
    who = await ldap_login(direct(slapd), None, "alice", "alice-pw-1")
    assert who.source == "ldap"
    assert who.subject == f"uid=alice,{PEOPLE}"
    assert who.email == "alice@example.org"
    assert who.name == "Alice Admin"
    assert {g.lower() for g in who.groups} == {
        f"cn=sb-admins,{GROUPS}",
        f"cn=engineering,{GROUPS}",
        f"cn=sb-users,{GROUPS}",
    }
    mapped = map_identity(who, MAPPING)
    assert (mapped.role, mapped.department) == ("tenant_admin", "Engineering")


async def test_search_then_bind_with_group_search(slapd: Slapd) -> None:
    cfg = searching(slapd, group_source="search", group_search_base=GROUPS)
    who = await ldap_login(cfg, slapd.service_password, "bob", "bob-pw-2")
    assert who.subject == f"uid=bob,{PEOPLE}"
    assert sorted(who.groups) == [f"cn=finance,{GROUPS}", f"cn=sb-users,{GROUPS}"]
    mapped = map_identity(who, MAPPING)
    assert (mapped.role, mapped.department) == ("department_admin", "Finance")


async def test_first_matching_rule_wins(slapd: Slapd) -> None:
    # dave is in engineering, finance and sb-users: finance comes first among role rules,
    # engineering first among department rules.
    who = await ldap_login(direct(slapd), None, "dave", "dave-pw-4")
    mapped = map_identity(who, MAPPING)
    assert (mapped.role, mapped.department) == ("department_admin", "Engineering")


async def test_no_group_means_default_role_or_refusal(slapd: Slapd) -> None:
    who = await ldap_login(direct(slapd), None, "carol", "carol-pw-3")
    assert who.groups == ()
    with pytest.raises(PermissionDenied):
        map_identity(who, MAPPING)
    fallback = MAPPING.model_copy(update={"default_role": "user", "default_department": "Misc"})
    mapped = map_identity(who, fallback)
    assert (mapped.role, mapped.department) == ("user", "Misc")


async def test_department_from_an_entry_attribute(slapd: Slapd) -> None:
    cfg = direct(slapd, extra_attributes=["departmentNumber"])
    who = await ldap_login(cfg, None, "bob", "bob-pw-2")
    assert who.claims == {"departmentNumber": "Finance"}
    mapping = RoleMapping(default_role="user", department_claim="departmentNumber")
    assert map_identity(who, mapping).department == "Finance"


@pytest.mark.parametrize("mode", ["direct", "search"])
async def test_wrong_password_and_unknown_user_look_the_same(slapd: Slapd, mode: str) -> None:
    cfg = direct(slapd) if mode == "direct" else searching(slapd)
    errors = []
    for user, password in (("alice", "wrong"), ("nobody", "alice-pw-1"), ("bob", "alice-pw-1")):
        with pytest.raises(AuthenticationFailed) as caught:
            await ldap_login(cfg, slapd.service_password, user, password)
        errors.append((caught.value.message, caught.value.code))
    assert len(set(errors)) == 1


def test_the_directory_itself_accepts_an_empty_password() -> None:
    """The trap is real on this server: a DN with no password binds (as anonymous)."""
    with Slapd() as server:
        done = subprocess.run(
            ["ldapwhoami", "-x", "-H", server.url, "-D", f"uid=alice,{PEOPLE}", "-w", ""],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "anonymous"


@pytest.mark.parametrize("mode", ["direct", "search"])
@pytest.mark.parametrize("password", ["", "\x00", "\x00alice-pw-1"])
async def test_empty_password_never_succeeds(slapd: Slapd, mode: str, password: str) -> None:
    cfg = direct(slapd) if mode == "direct" else searching(slapd)
    with pytest.raises(AuthenticationFailed):
        await ldap_login(cfg, slapd.service_password, "alice", password)


@pytest.mark.parametrize(
    "username",
    [
        "alic*",  # a wildcard that would match exactly alice
        "*",
        "alice)(uid=*",
        "*)(|(uid=alice",
        "alice)(objectClass=*",
        f"alice,{PEOPLE}",  # DN injection for the direct-bind template
        "alice\x00",
        "",
        "   ",
    ],
)
@pytest.mark.parametrize("mode", ["direct", "search"])
async def test_injection_is_escaped(slapd: Slapd, mode: str, username: str) -> None:
    cfg = direct(slapd) if mode == "direct" else searching(slapd)
    with pytest.raises(AuthenticationFailed):
        await ldap_login(cfg, slapd.service_password, username, "alice-pw-1")


async def test_special_characters_in_names_still_work(slapd: Slapd) -> None:
    """Escaping is not refusing: a uid with filter and DN metacharacters logs in, and the
    group search finds its groups (its DN escaped inside the group filter)."""
    uid = "o'neil (ops),+x*"
    person = slapd.add_person(uid, "oneil-pw-5", groups=("sb-users",))
    for cfg in (
        direct(slapd, group_source="search", group_search_base=GROUPS),
        searching(slapd, group_source="search", group_search_base=GROUPS),
    ):
        who = await ldap_login(cfg, slapd.service_password, uid, "oneil-pw-5")
        assert who.email == person.mail
        assert who.groups == (f"cn=sb-users,{GROUPS}",)


@pytest.mark.parametrize("mode", ["ldaps", "start_tls"])
async def test_tls_with_certificate_verification(slapd: Slapd, mode: str) -> None:
    cfg = direct(slapd, ca_file=str(slapd.ca_file), start_tls=mode == "start_tls")
    if mode == "ldaps":
        cfg = cfg.model_copy(update={"urls": [slapd.ldaps_url]})
    who = await ldap_login(cfg, None, "alice", "alice-pw-1")
    assert who.email == "alice@example.org"
    untrusted = cfg.model_copy(update={"ca_file": None})  # the system's CAs do not know it
    with pytest.raises(UpstreamUnavailable):
        await ldap_login(untrusted, None, "alice", "alice-pw-1")


async def test_service_account_with_wrong_password_is_a_directory_error(slapd: Slapd) -> None:
    with pytest.raises(UpstreamUnavailable):
        await ldap_login(searching(slapd), "not-the-password", "alice", "alice-pw-1")


async def test_unreachable_directory_fails_over_then_errors(slapd: Slapd) -> None:
    dead = "ldap://127.0.0.1:9"
    cfg = direct(slapd, timeout_seconds=2).model_copy(update={"urls": [dead, slapd.url]})
    who = await ldap_login(cfg, None, "alice", "alice-pw-1")
    assert who.email == "alice@example.org"
    with pytest.raises(UpstreamUnavailable):
        await ldap_login(cfg.model_copy(update={"urls": [dead]}), None, "alice", "alice-pw-1")


def test_mapping_never_grants_platform_admin() -> None:
    with pytest.raises(ValueError, match="role"):
        RoleMapping.model_validate({"role_rules": [{"value": "x", "role": "platform_admin"}]})


def test_ldap_group_matching_by_dn_or_cn() -> None:
    who = ExternalIdentity(
        source="ldap",
        subject="uid=x",
        email="x@example.org",
        groups=("CN=Domain Admins,CN=Users,DC=corp,DC=example",),
    )
    by_dn = RoleMapping.model_validate(
        {
            "role_rules": [
                {"value": "cn=domain admins, cn=users, dc=corp, dc=example", "role": "user"}
            ]
        }
    )
    assert map_identity(who, by_dn).role == "user"
    by_cn = RoleMapping.model_validate(
        {"role_rules": [{"value": "Domain Admins", "role": "tenant_admin"}]}
    )
    assert map_identity(who, by_cn).role == "tenant_admin"
    other = RoleMapping.model_validate({"role_rules": [{"value": "Users", "role": "user"}]})
    with pytest.raises(PermissionDenied):
        map_identity(who, other)


# -- through the gateway: admin API, /auth/v1/ldap/login, session, audit ----------------------


def ldap_provider(slapd: Slapd, **settings: Any) -> dict[str, Any]:
    return {
        "name": "corp",
        "display_name": "Corporate directory",
        "settings": {
            "kind": "ldap",
            "urls": [slapd.url],
            "bind_dn": SERVICE_DN,
            "user_search_base": PEOPLE,
            **settings,
        },
        "mapping": MAPPING.model_dump(),
        "secret": slapd.service_password,
    }


def new_tenant(gw: RunningGateway) -> str:
    slug = f"ldap-{secrets.token_hex(3)}"
    assert gw.admin("POST", "/admin/v1/tenants", json={"slug": slug}).status_code == 201
    return slug


def ldap_post(gw: RunningGateway, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + "/auth/v1/ldap/login", json=body, timeout=30)


@pytest.mark.slow
def test_ldap_login_through_the_gateway(gateway: RunningGateway, slapd: Slapd) -> None:
    slug = new_tenant(gateway)
    created = gateway.admin(
        "POST", f"/admin/v1/tenants/{slug}/identity-providers", json=ldap_provider(slapd)
    )
    assert created.status_code == 201, created.text
    assert created.json()["secret_set"] is True
    assert slapd.service_password not in created.text
    listed = gateway.admin("GET", f"/admin/v1/tenants/{slug}/identity-providers")
    assert slapd.service_password not in listed.text
    assert [p["name"] for p in listed.json()["data"]] == ["corp"]

    answer = ldap_post(gateway, {"tenant": slug, "username": "alice", "password": "alice-pw-1"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert tokens["user"]["role"] == "tenant_admin"
    assert tokens["user"]["source"] == "ldap"
    me = httpx.get(
        gateway.url + "/auth/v1/me",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=10,
    )
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "alice@example.org"
    assert me.json()["department_id"] is not None

    bob = ldap_post(gateway, {"tenant": slug, "username": "bob", "password": "bob-pw-2"})
    assert bob.json()["user"]["role"] == "department_admin"

    carol = ldap_post(gateway, {"tenant": slug, "username": "carol", "password": "carol-pw-3"})
    assert carol.status_code == 403
    assert carol.json()["error"]["code"] == "no_mapped_role"

    for username, password in (
        ("alice", "wrong"),
        ("alice", ""),
        ("alic*", "alice-pw-1"),
        ("nobody", "x"),
    ):
        refused = ldap_post(gateway, {"tenant": slug, "username": username, "password": password})
        assert refused.status_code == 401, (username, refused.text)
        assert refused.json()["error"]["code"] == "invalid_credentials"
    unknown_tenant = ldap_post(
        gateway, {"tenant": "no-such-tenant", "username": "alice", "password": "alice-pw-1"}
    )
    assert unknown_tenant.status_code == 401

    entries = audit(gateway, slug)
    logins = [
        (e["outcome"], e["details"].get("method")) for e in entries if e["action"] == "auth.login"
    ]
    assert ("ok", "ldap") in logins
    assert logins.count(("failed", "external")) == 5  # carol, and the four refusals
    made = next(e for e in entries if e["action"] == "identity_provider.create")
    assert (made["target"], made["details"]["kind"]) == ("corp", "ldap")
    assert slapd.service_password not in str(entries)


@pytest.mark.slow
def test_ldap_login_is_throttled(gateway: RunningGateway, slapd: Slapd) -> None:
    slug = new_tenant(gateway)
    gateway.admin("POST", f"/admin/v1/tenants/{slug}/identity-providers", json=ldap_provider(slapd))
    limit = gateway.settings.login_max_failures
    for _ in range(limit):
        body = {"tenant": slug, "username": "bob", "password": "wrong"}
        assert ldap_post(gateway, body).status_code == 401
    right = ldap_post(gateway, {"tenant": slug, "username": "bob", "password": "bob-pw-2"})
    assert right.status_code == 429
    assert right.json()["error"]["code"] == "login_throttled"


@pytest.mark.slow
def test_provider_choice_and_disabled_providers(gateway: RunningGateway, slapd: Slapd) -> None:
    slug = new_tenant(gateway)
    path = f"/admin/v1/tenants/{slug}/identity-providers"
    gateway.admin("POST", path, json=ldap_provider(slapd))
    second = {**ldap_provider(slapd), "name": "direct"}
    second["settings"] = {
        "kind": "ldap",
        "urls": [slapd.url],
        "bind_dn_template": f"uid={{username}},{PEOPLE}",
        "user_search_base": PEOPLE,
    }
    second.pop("secret")
    assert gateway.admin("POST", path, json=second).status_code == 201
    body = {"tenant": slug, "username": "bob", "password": "bob-pw-2"}
    ambiguous = ldap_post(gateway, body)
    assert ambiguous.status_code == 400
    assert ldap_post(gateway, {**body, "provider": "direct"}).status_code == 200
    off = gateway.admin("PUT", f"{path}/direct", json={**second, "enabled": False})
    assert off.status_code == 200, off.text
    assert ldap_post(gateway, {**body, "provider": "direct"}).status_code == 404
    assert ldap_post(gateway, body).status_code == 200  # one enabled LDAP provider left
    options = httpx.get(f"{gateway.url}/auth/v1/tenants/{slug}/identity-providers", timeout=10)
    assert options.json()["data"] == [
        {"name": "corp", "kind": "ldap", "display_name": "Corporate directory"}
    ]


def audit(gw: RunningGateway, slug: str) -> list[dict[str, Any]]:
    """The tenant's audit log, newest first, through the admin API."""
    answer = gw.admin("GET", "/admin/v1/audit", params={"tenant": slug, "limit": 1000})
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["data"]
    return entries

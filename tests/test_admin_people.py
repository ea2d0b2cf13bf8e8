"""The admin API for departments, users, keys of users and the audit log, used as intended,
against a real gateway on SQLite and PostgreSQL; and the access table that guards it."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import openai
import pytest
from starlette.routing import Route

from conftest import RunningGateway
from people import PASSWORD, add_user, bearer, login_as, tokens
from switchboard.api import (
    admin,
    admin_analytics,
    admin_billing,
    admin_identity_providers,
    admin_limits,
    admin_people,
    admin_sessions,
)
from switchboard.api.admin_access import RULES, guard


class Admin:
    """A signed-in tenant admin of a fresh tenant, calling the admin API."""

    def __init__(self, gateway: RunningGateway) -> None:
        gateway.new_tenant("people")
        self.gateway = gateway
        self.tenant = gateway.keys["people:slug"]
        url = gateway.settings.resolved_database_url()
        self.person = add_user(url, self.tenant, "tenant_admin")
        self.token = tokens(gateway.url, self.person)["access_token"]

    def __call__(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        url = self.gateway.url + path.replace("{t}", f"/admin/v1/tenants/{self.tenant}")
        return httpx.request(method, url, headers=bearer(token or self.token), timeout=10, **kw)

    def sign_in(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = login_as(self.gateway.url, self.tenant, email, password)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def test_every_admin_route_has_an_access_rule() -> None:
    routes = [
        *admin.routes,
        *admin_people.routes,
        *admin_sessions.routes,
        *admin_billing.routes,
        *admin_limits.routes,
        *admin_identity_providers.routes,
        *admin_analytics.routes,
    ]
    declared = {
        (m, r.path)
        for r in routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    assert declared == set(RULES)
    with pytest.raises(RuntimeError, match="no access rule"):
        guard([Route("/admin/v1/secret", admin.list_models, methods=["GET"])])


@pytest.mark.slow
def test_departments_crud(gateway: RunningGateway) -> None:
    call = Admin(gateway)
    created = call("POST", "{t}/departments", json={"name": "Legal"})
    assert created.status_code == 201
    dep = created.json()
    assert dep["id"].startswith("dep_")
    assert call("GET", f"{{t}}/departments/{dep['id']}").json()["name"] == "Legal"
    renamed = call("PATCH", f"{{t}}/departments/{dep['id']}", json={"name": "Legal & Risk"})
    assert renamed.json()["name"] == "Legal & Risk"
    assert [d["name"] for d in call("GET", "{t}/departments").json()["data"]] == ["Legal & Risk"]
    assert call("POST", "{t}/departments", json={"name": "Legal & Risk"}).status_code == 400
    assert call("POST", "{t}/departments", json={}).status_code == 400
    assert call("DELETE", f"{{t}}/departments/{dep['id']}").status_code == 204
    assert call("GET", f"{{t}}/departments/{dep['id']}").status_code == 404


@pytest.mark.slow
def test_users_crud_and_sign_in(gateway: RunningGateway) -> None:
    call = Admin(gateway)
    call("POST", "{t}/departments", json={"name": "Ops"})
    created = call(
        "POST",
        "{t}/users",
        json={
            "email": "Dana@Example.com",
            "password": PASSWORD,
            "role": "department_admin",
            "department": "Ops",
            "name": "Dana",
        },
    )
    assert created.status_code == 201, created.text
    dana = created.json()
    assert (dana["email"], dana["role"], dana["source"]) == (
        "dana@example.com",
        "department_admin",
        "local",
    )
    assert "password" not in created.text
    session = call.sign_in("dana@example.com")
    # A department admin's new users join their department.
    erin = call(
        "POST",
        "{t}/users",
        token=session["access_token"],
        json={"email": "erin@example.com", "password": PASSWORD},
    ).json()
    assert (erin["department_id"], erin["role"]) == (dana["department_id"], "user")
    listed = call("GET", "{t}/users").json()["data"]
    assert {u["email"] for u in listed} >= {"dana@example.com", "erin@example.com"}
    duplicate = call("POST", "{t}/users", json={"email": "erin@example.com"})
    assert (duplicate.status_code, duplicate.json()["error"]["param"]) == (400, "email")
    for bad, param in (
        ({"email": "nope"}, "email"),
        ({"email": "f@x.io", "role": "owner"}, "role"),
        ({"email": "f@x.io", "password": "short"}, "password"),
        ({"email": "f@x.io", "department": "Nowhere"}, "department"),
    ):
        response = call("POST", "{t}/users", json=bad)
        assert (response.status_code, response.json()["error"]["param"]) == (400, param)
    changed = call(
        "PATCH", f"{{t}}/users/{erin['id']}", json={"name": "Erin E.", "role": "department_admin"}
    )
    assert (changed.json()["name"], changed.json()["role"]) == ("Erin E.", "department_admin")
    assert call("PATCH", f"{{t}}/users/{erin['id']}", json={"shoe": 1}).status_code == 400


@pytest.mark.slow
def test_disabling_or_repassing_a_user_ends_their_sessions(gateway: RunningGateway) -> None:
    call = Admin(gateway)
    frank = call("POST", "{t}/users", json={"email": "frank@example.com", "password": PASSWORD})
    user_id = frank.json()["id"]
    key = call("POST", "{t}/keys", json={"user": user_id}).json()["key"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as sdk:
        assert sdk.models.list().data
        session = call.sign_in("frank@example.com")
        me = httpx.get(
            gateway.url + "/auth/v1/me", headers=bearer(session["access_token"]), timeout=10
        )
        assert me.status_code == 200
        new_password = "a brand new passphrase"
        assert (
            call("PATCH", f"{{t}}/users/{user_id}", json={"password": new_password}).status_code
            == 200
        )
        gone = httpx.get(
            gateway.url + "/auth/v1/me", headers=bearer(session["access_token"]), timeout=10
        )
        assert gone.json()["error"]["code"] == "session_revoked"
        assert login_as(gateway.url, call.tenant, "frank@example.com", PASSWORD).status_code == 401
        again = call.sign_in("frank@example.com", new_password)
        assert call("PATCH", f"{{t}}/users/{user_id}", json={"disabled": True}).json()["disabled"]
        refused = httpx.post(
            gateway.url + "/auth/v1/refresh",
            json={"refresh_token": again["refresh_token"]},
            timeout=10,
        )
        assert refused.json()["error"]["code"] == "session_revoked"
        assert (
            login_as(gateway.url, call.tenant, "frank@example.com", new_password).status_code == 401
        )
        with pytest.raises(openai.AuthenticationError) as blocked:
            sdk.models.list()
        assert blocked.value.code == "key_owner_disabled"
        assert call("PATCH", f"{{t}}/users/{user_id}", json={"disabled": False}).status_code == 200
        assert sdk.models.list().data  # enabled again: the key works again


@pytest.mark.slow
def test_keys_for_users_and_service_keys(gateway: RunningGateway) -> None:
    call = Admin(gateway)
    grace = call("POST", "{t}/users", json={"email": "grace@example.com", "password": PASSWORD})
    grace_id = grace.json()["id"]
    for_her = call("POST", "{t}/keys", json={"name": "grace's", "user": "grace@example.com"})
    assert for_her.status_code == 201
    assert for_her.json()["user_id"] == grace_id
    service = call("POST", "{t}/keys", json={"name": "batch"}).json()
    assert service["user_id"] is None
    unknown = call("POST", "{t}/keys", json={"user": "nobody@example.com"})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "user")
    # Grace makes her own key and uses it.
    session = call.sign_in("grace@example.com")
    own = call("POST", "{t}/keys", token=session["access_token"], json={"name": "laptop"}).json()
    assert own["user_id"] == grace_id
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=own["key"], max_retries=0) as sdk:
        assert sdk.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hi"}]
        ).choices
        mine = call("GET", "{t}/keys", token=session["access_token"]).json()["data"]
        assert {k["id"] for k in mine} == {own["id"], for_her.json()["id"]}
        # Deleting her revokes her keys: the gateway refuses them.
        assert call("DELETE", f"{{t}}/users/{grace_id}").status_code == 204
        with pytest.raises(openai.AuthenticationError):
            sdk.models.list()
        keys = {k["id"]: k for k in call("GET", "{t}/keys").json()["data"]}
        assert keys[own["id"]]["revoked_at"] is not None
        assert keys[own["id"]]["user_id"] is None


@pytest.mark.slow
def test_audit_log_records_mutations_and_logins(gateway: RunningGateway) -> None:
    call = Admin(gateway)
    ivan = call("POST", "{t}/users", json={"email": "ivan@example.com", "password": PASSWORD})
    key = call("POST", "{t}/keys", json={"user": "ivan@example.com"}).json()
    call("POST", f"/admin/v1/keys/{key['id']}/revoke")
    call("PUT", "{t}/config", json={"blocked_tools": ["mcp_finance"]})
    login_as(gateway.url, call.tenant, "ivan@example.com", "wrong password")
    session = call.sign_in("ivan@example.com")
    httpx.post(gateway.url + "/auth/v1/logout", headers=bearer(session["access_token"]), timeout=10)
    entries = call("GET", "/admin/v1/audit", params={"limit": 100}).json()["data"]
    seen = [(e["action"], e["outcome"]) for e in reversed(entries)]
    expected = [
        ("tenant.create", "ok"),  # by the platform admin key (new_tenant)
        ("key.create", "ok"),
        ("auth.login", "ok"),  # the tenant admin's own sign-in
        ("user.create", "ok"),
        ("key.create", "ok"),
        ("key.revoke", "ok"),
        ("tenant.config.update", "ok"),
        ("auth.login", "failed"),
        ("auth.login", "ok"),
        ("auth.logout", "ok"),
    ]
    assert seen == expected
    by_action = {e["action"]: e for e in reversed(entries) if e["outcome"] == "ok"}
    assert entries[-1]["actor_kind"] == "admin_key"
    created = by_action["user.create"]
    assert created["actor_id"] == call.person.user.id
    assert created["actor_role"] == "tenant_admin"
    assert created["target"] == ivan.json()["id"]
    assert created["client_ip"] == "127.0.0.1"
    assert created["user_agent"].startswith("python-httpx")
    assert PASSWORD not in str(entries)
    assert key["key"] not in str(entries)
    assert by_action["tenant.config.update"]["details"]["fields"] == ["blocked_tools"]
    failed = next(e for e in entries if e["outcome"] == "failed")
    assert (failed["actor_kind"], failed["actor_id"]) == ("anonymous", "ivan@example.com")
    # Filters and paging.
    only = call("GET", "/admin/v1/audit", params={"action": "auth."}).json()["data"]
    assert {e["action"] for e in only} == {"auth.login", "auth.logout"}
    page = call("GET", "/admin/v1/audit", params={"limit": 3}).json()
    assert len(page["data"]) == 3
    rest = call("GET", "/admin/v1/audit", params={"cursor": page["next_cursor"]}).json()["data"]
    assert [e["id"] for e in page["data"] + rest] == [e["id"] for e in entries]
    future = call("GET", "/admin/v1/audit", params={"since": "2999-01-01"}).json()["data"]
    assert future == []
    assert call("GET", "/admin/v1/audit", params={"limit": "0"}).status_code == 400
    bad = call("GET", "/admin/v1/audit", params={"until": "yesterday"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "until")
    everyone = gateway.admin("GET", "/admin/v1/audit", params={"tenant": call.tenant}).json()
    assert [e["id"] for e in everyone["data"]] == [e["id"] for e in entries]


@pytest.mark.slow
def test_platform_admins_over_the_api(gateway: RunningGateway) -> None:
    email = f"ops-{secrets.token_hex(4)}@example.com"
    created = gateway.admin(
        "POST", "/admin/v1/platform-admins", json={"email": email, "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    root = created.json()
    assert (root["role"], root["tenant_id"]) == ("platform_admin", None)
    signed = login_as(gateway.url, None, email, PASSWORD)
    assert signed.status_code == 200
    token = signed.json()["access_token"]
    mine = httpx.get(
        gateway.url + "/admin/v1/platform-admins", headers=bearer(token), timeout=10
    ).json()["data"]
    assert root["id"] in {u["id"] for u in mine}
    made = httpx.post(
        gateway.url + "/admin/v1/tenants",
        headers=bearer(token),
        json={"slug": f"by-root-{secrets.token_hex(4)}"},
        timeout=10,
    )
    assert made.status_code == 201
    own = f"/admin/v1/platform-admins/{root['id']}"
    self_delete = httpx.delete(gateway.url + own, headers=bearer(token), timeout=10)
    assert self_delete.json()["error"]["code"] == "outside_scope"
    # Tenant admins cannot see or make platform admins; tenant user ids are not found here.
    call = Admin(gateway)
    refused = call("GET", "/admin/v1/platform-admins")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_role")
    tenant_user = f"/admin/v1/platform-admins/{call.person.user.id}"
    assert gateway.admin("PATCH", tenant_user, json={"name": "x"}).status_code == 404
    assert gateway.admin("PATCH", own, json={"disabled": True}).json()["disabled"] is True
    gone = httpx.get(gateway.url + "/auth/v1/me", headers=bearer(token), timeout=10)
    assert gone.json()["error"]["code"] == "session_revoked"
    assert gateway.admin("DELETE", own).status_code == 204
    assert login_as(gateway.url, None, email, PASSWORD).status_code == 401

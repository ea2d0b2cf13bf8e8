"""Attack-style tests of the admin API's access control, on SQLite and on PostgreSQL.

Two tenants: A (departments Red and Blue) and B. Each test is an attacker with a real session
(or key) trying to reach past their scope; every attempt must be refused with the right status
and OpenAI's error shape, and nothing may change.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import jwt
import openai
import pytest
from sqlalchemy import update

from conftest import RunningGateway
from people import Person, add_user, bearer, tokens
from switchboard.auth.tokens import AccessTokens, session_secret
from switchboard.store import Database
from switchboard.store.database import utcnow
from switchboard.store.schema import sessions

pytestmark = pytest.mark.slow


@dataclass
class World:
    gateway: RunningGateway
    a: str  # tenant slugs
    b: str
    people: dict[str, Person] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)  # name -> access token
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> created key

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = bearer(self.access[who]) if who in self.access else bearer(who)
        return httpx.request(method, self.gateway.url + path, headers=headers, timeout=10, **kwargs)

    def user_id(self, name: str) -> str:
        return self.people[name].user.id


def refused(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    expected_type = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    assert error["type"] == expected_type[status]
    if code is not None:
        assert error["code"] == code


@pytest.fixture(scope="module")
def world(gateway: RunningGateway) -> World:
    gateway.new_tenant("atk-a")
    gateway.new_tenant("atk-b")
    w = World(gateway, gateway.keys["atk-a:slug"], gateway.keys["atk-b:slug"])
    url = gateway.settings.resolved_database_url()
    cast = {
        "a_admin": (w.a, "tenant_admin", None),
        "red_admin": (w.a, "department_admin", "Red"),
        "red_user": (w.a, "user", "Red"),
        "red_user2": (w.a, "user", "Red"),
        "blue_user": (w.a, "user", "Blue"),
        "b_admin": (w.b, "tenant_admin", None),
        "b_user": (w.b, "user", None),
    }
    for name, (tenant, role, department) in cast.items():
        w.people[name] = add_user(url, tenant, role, department=department)
        w.access[name] = tokens(gateway.url, w.people[name])["access_token"]
    for owner, tenant in (
        ("red_user", w.a),
        ("blue_user", w.a),
        ("b_user", w.b),
        ("red_user2", w.a),
    ):
        created = w.call(owner, "POST", f"/admin/v1/tenants/{tenant}/keys", json={"name": owner})
        assert created.status_code == 201, created.text
        w.keys[owner] = created.json()
    service = w.call("a_admin", "POST", f"/admin/v1/tenants/{w.a}/keys", json={"name": "svc"})
    assert service.status_code == 201
    w.keys["service"] = service.json()
    return w


def chat(gateway: RunningGateway, key: str, **headers: str) -> Any:
    sdk = openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=key, max_retries=0, default_headers=headers
    )
    return sdk.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}]
    )


def usage_ids(w: World, who: str, tenant: str, expect: int) -> set[str]:
    deadline = time.monotonic() + 5
    while True:
        rows = w.call(who, "GET", f"/admin/v1/tenants/{tenant}/usage").json()
        ids = {r["key_id"] for r in rows}
        if len(rows) >= expect or time.monotonic() > deadline:
            return ids
        time.sleep(0.05)


# -- a user of department Red reaching for Blue's data --------------------------------------


def test_a_user_cannot_read_other_peoples_data(world: World) -> None:
    w, a = world, world.a
    refused(w.call("red_user", "GET", f"/admin/v1/tenants/{a}/users"), 403, "insufficient_role")
    refused(
        w.call("red_user", "GET", f"/admin/v1/tenants/{a}/users/{w.user_id('blue_user')}"),
        403,
        "outside_scope",
    )
    own = w.call("red_user", "GET", f"/admin/v1/tenants/{a}/users/{w.user_id('red_user')}")
    assert own.status_code == 200
    keys = w.call("red_user", "GET", f"/admin/v1/tenants/{a}/keys").json()["data"]
    assert [k["id"] for k in keys] == [w.keys["red_user"]["id"]]
    refused(w.call("red_user", "GET", f"/admin/v1/tenants/{a}/departments"), 403)
    refused(w.call("red_user", "GET", f"/admin/v1/tenants/{a}/config"), 403, "insufficient_role")


def test_a_user_sees_only_their_own_usage(world: World) -> None:
    w = world
    for name in ("red_user", "blue_user", "red_user2"):
        assert chat(w.gateway, w.keys[name]["key"]).status_code == 200
    assert usage_ids(w, "a_admin", w.a, 3) >= {w.keys[n]["id"] for n in ("red_user", "blue_user")}
    assert usage_ids(w, "red_user", w.a, 1) == {w.keys["red_user"]["id"]}
    assert usage_ids(w, "blue_user", w.a, 1) == {w.keys["blue_user"]["id"]}
    red = usage_ids(w, "red_admin", w.a, 2)
    assert red == {w.keys["red_user"]["id"], w.keys["red_user2"]["id"]}


def test_a_user_cannot_touch_other_keys(world: World) -> None:
    w = world
    for victim in ("blue_user", "service"):
        refused(
            w.call("red_user", "POST", f"/admin/v1/keys/{w.keys[victim]['id']}/revoke"),
            403,
            "outside_scope",
        )
    refused(  # another tenant's key id does not even exist for them
        w.call("red_user", "POST", f"/admin/v1/keys/{w.keys['b_user']['id']}/revoke"), 404
    )
    for body in ({"user": w.people["blue_user"].user.email}, {"user": w.user_id("red_admin")}):
        refused(
            w.call("red_user", "POST", f"/admin/v1/tenants/{w.a}/keys", json=body),
            403,
            "outside_scope",
        )
    assert chat(w.gateway, w.keys["blue_user"]["key"]).status_code == 200  # still works


# -- a department admin reaching past their department ---------------------------------------


def test_a_department_admin_stays_in_their_department(world: World) -> None:
    w, a = world, world.a
    listed = w.call("red_admin", "GET", f"/admin/v1/tenants/{a}/users").json()["data"]
    assert {u["id"] for u in listed} == {
        w.user_id(n) for n in ("red_admin", "red_user", "red_user2")
    }
    blue = w.user_id("blue_user")
    refused(w.call("red_admin", "GET", f"/admin/v1/tenants/{a}/users/{blue}"), 403)
    refused(
        w.call("red_admin", "PATCH", f"/admin/v1/tenants/{a}/users/{blue}", json={"name": "x"}),
        403,
    )
    refused(w.call("red_admin", "DELETE", f"/admin/v1/tenants/{a}/users/{blue}"), 403)
    keys = w.call("red_admin", "GET", f"/admin/v1/tenants/{a}/keys").json()["data"]
    assert {k["id"] for k in keys} == {w.keys["red_user"]["id"], w.keys["red_user2"]["id"]}
    refused(w.call("red_admin", "POST", f"/admin/v1/keys/{w.keys['blue_user']['id']}/revoke"), 403)
    departments = w.call("red_admin", "GET", f"/admin/v1/tenants/{a}/departments").json()["data"]
    assert [d["name"] for d in departments] == ["Red"]
    refused(
        w.call(
            "red_admin",
            "POST",
            f"/admin/v1/tenants/{a}/users",
            json={"email": "blue2@example.com", "password": "long enough pw", "department": "Blue"},
        ),
        403,
    )


def test_a_department_admin_cannot_escalate(world: World) -> None:
    w, a = world, world.a
    target = f"/admin/v1/tenants/{a}/users/{w.user_id('red_user')}"
    for role in ("tenant_admin", "department_admin", "platform_admin"):
        refused(w.call("red_admin", "PATCH", target, json={"role": role}), 403)
    me = f"/admin/v1/tenants/{a}/users/{w.user_id('red_admin')}"
    refused(w.call("red_admin", "PATCH", me, json={"role": "tenant_admin"}), 403)
    refused(
        w.call(
            "red_admin",
            "POST",
            f"/admin/v1/tenants/{a}/users",
            json={
                "email": "boss@example.com",
                "password": "long enough pw",
                "role": "tenant_admin",
            },
        ),
        403,
    )
    after = w.call("a_admin", "GET", target).json()
    assert after["role"] == "user"
    denied = w.call(
        "a_admin",
        "GET",
        "/admin/v1/audit",
        params={"action": "user.update", "actor": w.user_id("red_admin")},
    ).json()["data"]
    assert denied
    assert {e["outcome"] for e in denied} == {"denied"}


def test_a_user_cannot_escalate_themselves(world: World) -> None:
    w = world
    me = f"/admin/v1/tenants/{w.a}/users/{w.user_id('red_user')}"
    refused(
        w.call("red_user", "PATCH", me, json={"role": "tenant_admin"}), 403, "insufficient_role"
    )


# -- a tenant admin reaching into another tenant ----------------------------------------------


def test_a_tenant_admin_cannot_edit_another_tenant(world: World) -> None:
    w, b = world, world.b
    before = w.call("b_admin", "GET", f"/admin/v1/tenants/{b}/config").json()
    policy = {"blocked_tools": ["everything"], "rate_limit_per_minute": 1}
    attempts = [
        ("GET", f"/admin/v1/tenants/{b}", None),
        ("PATCH", f"/admin/v1/tenants/{b}", {"usage_mode": "local"}),
        ("GET", f"/admin/v1/tenants/{b}/config", None),
        ("PUT", f"/admin/v1/tenants/{b}/config", policy),
        ("GET", f"/admin/v1/tenants/{b}/users", None),
        (
            "POST",
            f"/admin/v1/tenants/{b}/users",
            {"email": "spy@example.com", "role": "tenant_admin"},
        ),
        ("PATCH", f"/admin/v1/tenants/{b}/users/{w.user_id('b_user')}", {"disabled": True}),
        ("GET", f"/admin/v1/tenants/{b}/keys", None),
        ("POST", f"/admin/v1/tenants/{b}/keys", {"name": "stolen"}),
        ("GET", f"/admin/v1/tenants/{b}/usage", None),
        ("GET", f"/admin/v1/tenants/{b}/departments", None),
        ("GET", "/admin/v1/tenants/no-such-tenant", None),  # no probing for tenant names
    ]
    for method, path, body in attempts:
        refused(w.call("a_admin", method, path, json=body), 403, "outside_scope")
    refused(w.call("a_admin", "POST", f"/admin/v1/keys/{w.keys['b_user']['id']}/revoke"), 404)
    # B's user id under A's path is not found either.
    refused(
        w.call(
            "a_admin",
            "PATCH",
            f"/admin/v1/tenants/{w.a}/users/{w.user_id('b_user')}",
            json={"disabled": True},
        ),
        404,
    )
    assert w.call("b_admin", "GET", f"/admin/v1/tenants/{b}/config").json() == before
    assert chat(w.gateway, w.keys["b_user"]["key"]).status_code == 200


def test_a_tenant_admin_is_not_a_platform_admin(world: World) -> None:
    w = world
    tenants = w.call("a_admin", "GET", "/admin/v1/tenants").json()["data"]
    assert [t["slug"] for t in tenants] == [w.a]
    refused(w.call("a_admin", "POST", "/admin/v1/tenants", json={"slug": "mine"}), 403)
    for path in ("/admin/v1/models", "/admin/v1/routing", "/admin/v1/doctor", "/admin/v1/export"):
        refused(w.call("a_admin", "GET", path), 403, "insufficient_role")
    refused(
        w.call(
            "a_admin",
            "POST",
            f"/admin/v1/tenants/{w.a}/users",
            json={"email": "root2@example.com", "role": "platform_admin"},
        ),
        403,
    )
    refused(w.call("a_admin", "GET", "/admin/v1/audit", params={"tenant": w.b}), 403)
    own = w.call("a_admin", "GET", "/admin/v1/audit").json()["data"]
    assert own
    assert {e["tenant_id"] for e in own} == {w.people["a_admin"].user.tenant_id}
    refused(w.call("red_admin", "GET", "/admin/v1/audit"), 403, "insufficient_role")


# -- stolen, forged and dead credentials -------------------------------------------------------


def signing_key(w: World) -> bytes:
    async def run() -> bytes:
        db = Database(w.gateway.settings.resolved_database_url())
        try:
            return await session_secret(db, None)
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_forged_tokens_do_not_open_the_admin_api(world: World) -> None:
    w = world
    claims = jwt.decode(w.access["red_user"], options={"verify_signature": False})
    escalated = {**claims, "role": "platform_admin", "tenant": None}
    header, _, signature = w.access["red_user"].split(".")
    forged = [
        jwt.encode(escalated, "attacker-chosen-key-of-32-bytes!!", algorithm="HS256"),
        jwt.encode(escalated, "", algorithm="none"),
        header
        + "."
        + jwt.encode(escalated, "x" * 32, algorithm="HS256").split(".")[1]
        + "."
        + signature,
    ]
    for token in forged:
        refused(w.call(token, "GET", "/admin/v1/tenants"), 401, "invalid_token")
    stale = AccessTokens(signing_key(w), ttl_seconds=-1).issue(
        w.people["red_user"].user, claims["sid"]
    )
    refused(w.call(stale, "GET", f"/admin/v1/tenants/{w.a}/keys"), 401, "token_expired")
    # A valid signature does not help either: role and tenant come from the database.
    minted = AccessTokens(signing_key(w), ttl_seconds=60)
    lifted = jwt.encode(
        {**escalated, "exp": int(time.time()) + 60}, signing_key(w), algorithm="HS256"
    )
    assert minted.verify(lifted).role == "platform_admin"
    refused(w.call(lifted, "POST", "/admin/v1/tenants", json={"slug": "evil"}), 403)


def test_dead_sessions_do_not_open_the_admin_api(world: World) -> None:
    w = world
    person = w.people["blue_user"]
    logged_out = tokens(w.gateway.url, person)
    out = w.call(logged_out["access_token"], "POST", "/auth/v1/logout")
    assert out.status_code == 204
    refused(
        w.call(logged_out["access_token"], "GET", f"/admin/v1/tenants/{w.a}/keys"),
        401,
        "session_revoked",
    )

    idle = tokens(w.gateway.url, person)

    async def age() -> None:
        db = Database(w.gateway.settings.resolved_database_url())
        try:
            async with db.engine.begin() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == idle["session_id"])
                    .values(last_used_at=utcnow() - timedelta(days=1))
                )
        finally:
            await db.dispose()

    asyncio.run(age())
    refused(
        w.call(idle["access_token"], "GET", f"/admin/v1/tenants/{w.a}/keys"), 401, "session_expired"
    )

    stolen = tokens(w.gateway.url, person)
    rotated = httpx.post(
        w.gateway.url + "/auth/v1/refresh",
        json={"refresh_token": stolen["refresh_token"]},
        timeout=10,
    ).json()
    again = httpx.post(
        w.gateway.url + "/auth/v1/refresh",
        json={"refresh_token": stolen["refresh_token"]},
        timeout=10,
    )
    refused(again, 401, "refresh_token_reused")
    refused(
        w.call(rotated["access_token"], "GET", f"/admin/v1/tenants/{w.a}/keys"),
        401,
        "session_revoked",
    )


def test_api_keys_do_not_open_the_admin_api(world: World) -> None:
    w = world
    refused(w.call(w.keys["service"]["key"], "GET", f"/admin/v1/tenants/{w.a}/keys"), 401)


def test_a_revoked_key_is_refused(world: World) -> None:
    w = world
    mine = w.call("red_user2", "POST", f"/admin/v1/tenants/{w.a}/keys", json={"name": "short"})
    key = mine.json()
    assert chat(w.gateway, key["key"]).status_code == 200
    revoked = w.call("red_user2", "POST", f"/admin/v1/keys/{key['id']}/revoke")
    assert revoked.status_code == 200
    with pytest.raises(openai.AuthenticationError) as refused_key:
        chat(w.gateway, key["key"])
    assert refused_key.value.code == "revoked_api_key"


def test_a_key_with_another_tenants_id_is_refused(world: World) -> None:
    w = world
    b_tenant_id = w.people["b_user"].user.tenant_id
    assert b_tenant_id is not None
    for other in (w.b, b_tenant_id):
        with pytest.raises(openai.PermissionDeniedError) as refused_key:
            chat(w.gateway, w.keys["red_user"]["key"], **{"X-Tenant-Id": other})
        assert refused_key.value.code == "tenant_mismatch"
    assert chat(w.gateway, w.keys["red_user"]["key"], **{"X-Tenant-Id": w.a}).status_code == 200


# -- key policies and budgets: limits are a tenant admin's to set ----------------------------


def test_key_policies_and_budgets_stay_in_scope(world: World) -> None:
    w = world
    own, blue, b_key = (w.keys[n]["id"] for n in ("red_user", "blue_user", "b_user"))
    generous = {"rate_limit_per_minute": 1_000_000, "monthly_budget_usd": 1_000_000}
    # A user reads their own key's limits, but cannot raise them, nor read a colleague's.
    assert w.call("red_user", "GET", f"/admin/v1/keys/{own}/policy").status_code == 200
    refused(w.call("red_user", "PUT", f"/admin/v1/keys/{own}/policy", json=generous), 403)
    refused(w.call("red_user", "GET", f"/admin/v1/keys/{blue}/policy"), 403, "outside_scope")
    refused(w.call("red_user", "GET", f"/admin/v1/tenants/{w.a}/budget"), 403)
    # Another tenant's admin cannot see or set them; the key does not exist for them.
    refused(w.call("b_admin", "GET", f"/admin/v1/keys/{own}/policy"), 404)
    refused(w.call("b_admin", "PUT", f"/admin/v1/keys/{own}/policy", json=generous), 404)
    refused(w.call("b_admin", "GET", f"/admin/v1/tenants/{w.a}/budget"), 403, "outside_scope")
    refused(w.call("a_admin", "PUT", f"/admin/v1/keys/{b_key}/policy", json=generous), 404)
    # The tenant's own admin can, and the change is audited without the values.
    tight = {"rate_limit_per_minute": 7}
    assert w.call("a_admin", "PUT", f"/admin/v1/keys/{blue}/policy", json=tight).status_code == 200
    assert w.call("a_admin", "GET", f"/admin/v1/tenants/{w.a}/budget").status_code == 200
    audit = w.call("a_admin", "GET", "/admin/v1/audit", params={"action": "key.policy.update"})
    assert audit.status_code == 200, audit.text
    [row] = [r for r in audit.json()["data"] if r["target"] == blue]
    assert row["details"]["fields"] == ["rate_limit_per_minute"]
    assert (
        w.call("red_user", "GET", f"/admin/v1/keys/{own}/policy").json()["rate_limit_per_minute"]
        is None
    )

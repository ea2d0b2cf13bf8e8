"""Session lists over HTTP, on SQLite and PostgreSQL: a person lists and ends their own sessions
(/auth/v1/sessions), admins list and end the sessions of people in their scope
(/admin/v1/users/{user_id}/sessions); and attackers reaching past either get 404 or 403 while
nothing changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from conftest import RunningGateway
from people import Person, add_user, bearer
from test_sessions import age_session

pytestmark = pytest.mark.slow

FIELDS = {
    "id",
    "created_at",
    "last_used_at",
    "expires_at",
    "client_ip",
    "user_agent",
    "method",
    "current",
}


def sign_in(gw: RunningGateway, who: Person, agent: str = "pytest") -> dict[str, Any]:
    body = {"email": who.user.email, "password": who.password, "tenant": who.tenant}
    response = httpx.post(
        gw.url + "/auth/v1/login",
        json={k: v for k, v in body.items() if v is not None},
        headers={"user-agent": agent},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def call(gw: RunningGateway, token: str, method: str, path: str) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers=bearer(token), timeout=10)


def me(gw: RunningGateway, pair: dict[str, Any]) -> httpx.Response:
    return call(gw, pair["access_token"], "GET", "/auth/v1/me")


def refresh(gw: RunningGateway, pair: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gw.url + "/auth/v1/refresh", json={"refresh_token": pair["refresh_token"]}, timeout=10
    )


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def own(gw: RunningGateway, pair: dict[str, Any]) -> list[dict[str, Any]]:
    response = call(gw, pair["access_token"], "GET", "/auth/v1/sessions")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def works(gw: RunningGateway, pair: dict[str, Any]) -> bool:
    return me(gw, pair).status_code == 200


def audit(gw: RunningGateway, action: str, tenant: str | None = None) -> list[dict[str, Any]]:
    params = {"action": action, "limit": 1000, **({"tenant": tenant} if tenant else {})}
    response = gw.admin("GET", "/admin/v1/audit", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def user_in(gw: RunningGateway, slug: str | None, role: str = "user", **kw: str) -> Person:
    return add_user(gw.settings.resolved_database_url(), slug, role, **kw)


def new_tenant(gw: RunningGateway, name: str) -> str:
    gw.new_tenant(name)
    return gw.keys[f"{name}:slug"]


# -- self-service: /auth/v1/sessions ------------------------------------------------------


def test_the_list_shows_own_live_sessions_and_the_current_one(gateway: RunningGateway) -> None:
    slug = new_tenant(gateway, "own")
    ann, bob = user_in(gateway, slug), user_in(gateway, slug)
    laptop, phone = sign_in(gateway, ann, "laptop/1.0"), sign_in(gateway, ann, "phone/2.0")
    logged_out, idle = sign_in(gateway, ann), sign_in(gateway, ann)
    assert call(gateway, logged_out["access_token"], "POST", "/auth/v1/logout").status_code == 204
    age_session(gateway, idle["session_id"], timedelta(days=1))
    bobs = sign_in(gateway, bob)
    listed = own(gateway, laptop)
    assert {s["id"] for s in listed} == {laptop["session_id"], phone["session_id"]}
    by_id = {s["id"]: s for s in listed}
    assert all(set(s) == FIELDS for s in listed)
    assert by_id[laptop["session_id"]]["current"] is True
    assert by_id[phone["session_id"]]["current"] is False
    assert by_id[phone["session_id"]]["user_agent"] == "phone/2.0"
    assert {(s["method"], s["client_ip"]) for s in listed} == {("password", "127.0.0.1")}
    flipped = {s["id"]: s["current"] for s in own(gateway, phone)}
    assert flipped == {laptop["session_id"]: False, phone["session_id"]: True}
    response = call(gateway, laptop["access_token"], "GET", "/auth/v1/sessions")
    assert response.headers["cache-control"] == "no-store"
    for secret in (laptop["refresh_token"], phone["refresh_token"], phone["access_token"]):
        assert secret not in response.text
        assert secret.split(".")[-1] not in response.text
    assert "hash" not in response.text
    assert [s["id"] for s in own(gateway, bobs)] == [bobs["session_id"]]
    anonymous = httpx.get(gateway.url + "/auth/v1/sessions", timeout=10)
    assert anonymous.status_code == 401


def test_ending_one_session_stops_its_tokens_and_spares_this_one(gateway: RunningGateway) -> None:
    slug = new_tenant(gateway, "end1")
    ann = user_in(gateway, slug)
    here, there = sign_in(gateway, ann), sign_in(gateway, ann)
    assert works(gateway, there)  # seen alive, and cached so, by the worker
    path = f"/auth/v1/sessions/{there['session_id']}"
    assert call(gateway, here["access_token"], "DELETE", path).status_code == 204
    assert code(me(gateway, there)) == (401, "session_revoked")
    assert code(refresh(gateway, there)) == (401, "session_revoked")
    assert works(gateway, here)
    assert [s["id"] for s in own(gateway, here)] == [here["session_id"]]
    assert code(call(gateway, here["access_token"], "DELETE", path)) == (404, "not_found")
    unknown = call(gateway, here["access_token"], "DELETE", "/auth/v1/sessions/ses_nope")
    assert code(unknown) == (404, "not_found")
    assert refresh(gateway, here).status_code == 200
    [row] = [r for r in audit(gateway, "auth.session.revoke", slug) if r["outcome"] == "ok"]
    assert (row["actor_id"], row["target"]) == (ann.user.id, there["session_id"])


def test_ending_the_current_session_is_a_logout(gateway: RunningGateway) -> None:
    slug = new_tenant(gateway, "endme")
    ann = user_in(gateway, slug)
    here, there = sign_in(gateway, ann), sign_in(gateway, ann)
    path = f"/auth/v1/sessions/{here['session_id']}"
    assert call(gateway, here["access_token"], "DELETE", path).status_code == 204
    assert code(me(gateway, here)) == (401, "session_revoked")
    assert code(refresh(gateway, here)) == (401, "session_revoked")
    assert works(gateway, there)
    [row] = audit(gateway, "auth.logout", slug)
    assert row["target"] == here["session_id"]


def test_revoke_others_keeps_only_the_current_session(gateway: RunningGateway) -> None:
    slug = new_tenant(gateway, "others")
    ann, bob = user_in(gateway, slug), user_in(gateway, slug)
    here, *elsewhere = (sign_in(gateway, ann) for _ in range(3))
    bobs = sign_in(gateway, bob)
    assert all(works(gateway, pair) for pair in elsewhere)
    path = "/auth/v1/sessions/revoke-others"
    ended = call(gateway, here["access_token"], "POST", path)
    assert (ended.status_code, ended.json()) == (200, {"revoked": 2})
    for pair in elsewhere:
        assert code(me(gateway, pair)) == (401, "session_revoked")
        assert code(refresh(gateway, pair)) == (401, "session_revoked")
    assert works(gateway, here)
    assert works(gateway, bobs)  # nobody else's
    assert [s["id"] for s in own(gateway, here)] == [here["session_id"]]
    assert call(gateway, here["access_token"], "POST", path).json() == {"revoked": 0}
    [row, _] = audit(gateway, "auth.session.revoke_others", slug)
    assert (row["target"], row["details"]) == (ann.user.id, {"sessions": 0})


def test_nobody_ends_another_persons_session_through_the_self_service_routes(
    gateway: RunningGateway,
) -> None:
    slug, other = new_tenant(gateway, "self-a"), new_tenant(gateway, "self-b")
    victim = user_in(gateway, slug)
    attackers = [
        user_in(gateway, slug),  # a colleague
        user_in(gateway, slug, "tenant_admin"),  # even the tenant's admin, on these routes
        user_in(gateway, other, "tenant_admin"),  # another tenant
    ]
    target = sign_in(gateway, victim)
    for attacker in attackers:
        pair = sign_in(gateway, attacker)
        path = f"/auth/v1/sessions/{target['session_id']}"
        refused = call(gateway, pair["access_token"], "DELETE", path)
        assert code(refused) == (404, "not_found")
        assert refused.json()["error"]["type"] == "not_found_error"
        assert target["session_id"] not in {s["id"] for s in own(gateway, pair)}
    assert works(gateway, target)
    assert [s["id"] for s in own(gateway, target)] == [target["session_id"]]
    assert refresh(gateway, target).status_code == 200
    probes = audit(gateway, "auth.session.revoke")
    tried = [r for r in probes if r["target"] == target["session_id"]]
    assert {(r["outcome"], r["actor_id"]) for r in tried} == {
        ("not_found", a.user.id) for a in attackers
    }


# -- admins: /admin/v1/users/{user_id}/sessions -------------------------------------------


def test_an_admin_lists_and_ends_a_users_sessions(gateway: RunningGateway) -> None:
    slug = new_tenant(gateway, "adm")
    admin, ann = user_in(gateway, slug, "tenant_admin"), user_in(gateway, slug)
    console = sign_in(gateway, admin)
    token = console["access_token"]
    first, second = sign_in(gateway, ann, "laptop/1.0"), sign_in(gateway, ann)
    base = f"/admin/v1/users/{ann.user.id}/sessions"
    listed = call(gateway, token, "GET", base).json()["data"]
    assert {s["id"] for s in listed} == {first["session_id"], second["session_id"]}
    assert not any(s["current"] for s in listed)
    assert first["refresh_token"] not in str(listed)
    mine = call(gateway, token, "GET", f"/admin/v1/users/{admin.user.id}/sessions").json()
    assert [(s["id"], s["current"]) for s in mine["data"]] == [(console["session_id"], True)]
    # One session.
    assert works(gateway, first)
    assert call(gateway, token, "DELETE", f"{base}/{first['session_id']}").status_code == 204
    assert code(me(gateway, first)) == (401, "session_revoked")
    assert code(refresh(gateway, first)) == (401, "session_revoked")
    assert works(gateway, second)
    assert code(call(gateway, token, "DELETE", f"{base}/ses_nope")) == (404, "not_found")
    # All of them, without disabling the person.
    ended = call(gateway, token, "DELETE", base)
    assert (ended.status_code, ended.json()) == (200, {"revoked": 1})
    assert code(me(gateway, second)) == (401, "session_revoked")
    assert call(gateway, token, "GET", base).json()["data"] == []
    user = call(gateway, token, "GET", f"/admin/v1/tenants/{slug}/users/{ann.user.id}").json()
    assert user["disabled"] is False
    again = sign_in(gateway, ann)
    assert works(gateway, again)
    assert works(gateway, console)
    # The platform admin key reaches everyone's, platform admins' too.
    everyone = gateway.admin("GET", base).json()["data"]
    assert [s["id"] for s in everyone] == [again["session_id"]]
    root = user_in(gateway, None, "platform_admin")
    roots = sign_in(gateway, root)
    listed_root = gateway.admin("GET", f"/admin/v1/users/{root.user.id}/sessions").json()
    assert [s["id"] for s in listed_root["data"]] == [roots["session_id"]]
    assert gateway.admin("DELETE", f"/admin/v1/users/{root.user.id}/sessions").json() == {
        "revoked": 1
    }
    assert code(me(gateway, roots)) == (401, "session_revoked")
    # Audited as admin actions, without tokens.
    rows = {
        (r["action"], r["outcome"], r["target"]): r
        for r in audit(gateway, "user.session.revoke", slug)
        + audit(gateway, "user.session.revoke_all", slug)
    }
    one = rows["user.session.revoke", "ok", first["session_id"]]
    assert (one["actor_id"], one["details"]["user_id"]) == (admin.user.id, ann.user.id)
    assert ("user.session.revoke", "not_found", "ses_nope") in rows
    every = rows["user.session.revoke_all", "ok", ann.user.id]
    assert (every["actor_id"], every["details"]["sessions"]) == (admin.user.id, 1)
    assert first["refresh_token"] not in str(rows)
    assert second["access_token"] not in str(rows)


@dataclass
class Org:
    """Tenant A (departments Red and Blue) and tenant B, each person signed in once."""

    gateway: RunningGateway
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)

    def as_(self, who: str, method: str, whose: str, session: str | None = None) -> httpx.Response:
        path = f"/admin/v1/users/{self.people[whose].user.id}/sessions"
        if session is not None:
            path += f"/{self.pairs[session]['session_id']}"
        return call(self.gateway, self.pairs[who]["access_token"], method, path)

    def alive(self, *names: str) -> bool:
        return all(works(self.gateway, self.pairs[n]) for n in names)


@pytest.fixture(scope="module")
def org(gateway: RunningGateway) -> Org:
    a, b = new_tenant(gateway, "scope-a"), new_tenant(gateway, "scope-b")
    o = Org(gateway)
    cast = {
        "a_admin": (a, "tenant_admin", None),
        "red_admin": (a, "department_admin", "Red"),
        "red_user": (a, "user", "Red"),
        "blue_user": (a, "user", "Blue"),
        "blue_admin": (a, "department_admin", "Blue"),
        "b_admin": (b, "tenant_admin", None),
        "b_user": (b, "user", None),
    }
    for name, (slug, role, department) in cast.items():
        kw = {"department": department} if department else {}
        o.people[name] = user_in(gateway, slug, role, **kw)
        o.pairs[name] = sign_in(gateway, o.people[name])
    return o


def refused(response: httpx.Response, status: int, error_code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == error_code


def test_a_tenant_admin_cannot_reach_another_tenants_sessions(org: Org) -> None:
    for attacker, victim in (("a_admin", "b_user"), ("b_admin", "red_user")):
        refused(org.as_(attacker, "GET", victim), 404, "not_found")
        refused(org.as_(attacker, "DELETE", victim), 404, "not_found")
        refused(org.as_(attacker, "DELETE", victim, victim), 404, "not_found")
        # Their own user id with the victim's session id: still not theirs to end.
        own_id = org.as_(attacker, "DELETE", attacker, victim)
        refused(own_id, 404, "not_found")
    assert org.alive("b_user", "red_user", "a_admin", "b_admin")
    rows = audit(org.gateway, "user.session.")
    denied = [r for r in rows if r["actor_id"] == org.people["a_admin"].user.id]
    assert {(r["action"], r["outcome"]) for r in denied} == {
        ("user.session.revoke_all", "not_found"),
        ("user.session.revoke", "not_found"),
    }


def test_a_department_admin_stays_in_their_department(org: Org) -> None:
    refused(org.as_("red_admin", "GET", "blue_user"), 403, "outside_scope")
    refused(org.as_("red_admin", "DELETE", "blue_user"), 403, "outside_scope")
    refused(org.as_("red_admin", "DELETE", "blue_user", "blue_user"), 403, "outside_scope")
    refused(org.as_("red_admin", "GET", "a_admin"), 403, "outside_scope")  # above them
    refused(org.as_("red_admin", "DELETE", "blue_admin"), 403, "outside_scope")
    # A user of their department with a session id of another department: not found.
    refused(org.as_("red_admin", "DELETE", "red_user", "blue_user"), 404, "not_found")
    assert org.alive("blue_user", "blue_admin", "a_admin")
    listed = org.as_("red_admin", "GET", "red_user").json()["data"]
    assert [s["id"] for s in listed] == [org.pairs["red_user"]["session_id"]]
    rows = audit(org.gateway, "user.session.revoke_all")
    denied = {
        (r["outcome"], r["target"])
        for r in rows
        if r["actor_id"] == org.people["red_admin"].user.id
    }
    assert denied == {("denied", org.people[n].user.id) for n in ("blue_user", "blue_admin")}


def test_a_user_may_only_look_at_their_own_sessions_here(org: Org) -> None:
    listed = org.as_("blue_user", "GET", "blue_user").json()["data"]
    assert [(s["id"], s["current"]) for s in listed] == [
        (org.pairs["blue_user"]["session_id"], True)
    ]
    refused(org.as_("blue_user", "GET", "red_user"), 403, "outside_scope")
    refused(org.as_("blue_user", "DELETE", "red_user", "red_user"), 403, "insufficient_role")
    refused(org.as_("blue_user", "DELETE", "blue_user"), 403, "insufficient_role")
    assert org.alive("red_user", "blue_user")


def test_a_department_admin_ends_their_users_sessions(org: Org) -> None:
    extra = sign_in(org.gateway, org.people["red_user"])
    org.pairs["red_user_extra"] = extra
    assert org.as_("red_admin", "DELETE", "red_user", "red_user_extra").status_code == 204
    assert code(me(org.gateway, extra)) == (401, "session_revoked")
    assert org.alive("red_user")

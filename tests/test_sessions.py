"""Password sign-in, refresh rotation, logout and access tokens, against a real gateway on
SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from datetime import timedelta

import httpx
import jwt
import orjson
import pytest
from sqlalchemy import update

from conftest import RunningGateway
from people import Person, add_user, bearer, login, tokens
from switchboard.auth.tokens import AUDIENCE, ISSUER, AccessTokens, session_secret
from switchboard.store import Database
from switchboard.store.database import utcnow
from switchboard.store.schema import sessions

pytestmark = pytest.mark.slow


def db_url(gateway: RunningGateway) -> str:
    return gateway.settings.resolved_database_url()


def tenant_user(gateway: RunningGateway, role: str = "user", **kw: str) -> Person:
    gateway.new_tenant("sess")
    return add_user(db_url(gateway), gateway.keys["sess:slug"], role, **kw)


def me(gateway: RunningGateway, access: str) -> httpx.Response:
    return httpx.get(gateway.url + "/auth/v1/me", headers=bearer(access), timeout=10)


def refresh(gateway: RunningGateway, token: str) -> httpx.Response:
    return httpx.post(gateway.url + "/auth/v1/refresh", json={"refresh_token": token}, timeout=10)


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["type"], body["code"]


def signing_key(gateway: RunningGateway) -> bytes:
    async def run() -> bytes:
        db = Database(db_url(gateway))
        try:
            return await session_secret(db, None)
        finally:
            await db.dispose()

    return asyncio.run(run())


def age_session(gateway: RunningGateway, session_id: str, idle: timedelta) -> None:
    async def run() -> None:
        db = Database(db_url(gateway))
        try:
            async with db.engine.begin() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id)
                    .values(last_used_at=utcnow() - idle)
                )
        finally:
            await db.dispose()

    asyncio.run(run())


def test_login_me_and_claims(gateway: RunningGateway) -> None:
    person = tenant_user(gateway, "department_admin", department="Ops")
    pair = tokens(gateway.url, person)
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == gateway.settings.access_token_ttl_seconds
    assert pair["user"]["email"] == person.user.email
    assert "password_hash" not in pair["user"]
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["sub"] == person.user.id
    assert claims["sid"] == pair["session_id"]
    assert claims["tenant"] == person.user.tenant_id
    assert claims["role"] == "department_admin"
    assert claims["dept"] == person.user.department_id
    assert (claims["iss"], claims["aud"]) == (ISSUER, AUDIENCE)
    assert claims["exp"] - claims["iat"] == gateway.settings.access_token_ttl_seconds
    who = me(gateway, pair["access_token"])
    assert who.status_code == 200
    assert (who.json()["id"], who.json()["session_id"]) == (person.user.id, pair["session_id"])


def test_platform_admin_signs_in_without_a_tenant(gateway: RunningGateway) -> None:
    admin = add_user(db_url(gateway), None, "platform_admin")
    pair = tokens(gateway.url, admin)
    assert pair["user"]["role"] == "platform_admin"
    assert pair["user"]["tenant_id"] is None
    # The same e-mail and password do not work when a tenant is named.
    gateway.new_tenant("pa")
    named = login(gateway.url, admin, tenant=gateway.keys["pa:slug"])
    assert error(named) == (401, "authentication_error", "invalid_credentials")


def test_every_login_failure_looks_the_same(gateway: RunningGateway) -> None:
    person = tenant_user(gateway)
    other = Person(person.user, "wrong password!", person.tenant)
    ghost = Person(replace(person.user, email="nobody@example.com"), person.password, person.tenant)
    wrong_tenant = Person(person.user, person.password, "no-such-tenant")
    bodies = set()
    for attempt in (other, ghost, wrong_tenant):
        response = login(gateway.url, attempt)
        assert error(response) == (401, "authentication_error", "invalid_credentials")
        bodies.add(response.content)
    assert len(bodies) == 1  # nothing tells which part was wrong


def test_login_is_validated(gateway: RunningGateway) -> None:
    for body, param in (({}, "email"), ({"email": "a@b.c"}, "password"), ({"email": 5}, "email")):
        response = httpx.post(gateway.url + "/auth/v1/login", json=body, timeout=10)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


def test_repeated_failures_lock_the_email_out(gateway: RunningGateway) -> None:
    person = tenant_user(gateway)
    wrong = Person(person.user, "not the password", person.tenant)
    for _ in range(gateway.settings.login_max_failures):
        assert login(gateway.url, wrong).status_code == 401
    locked = login(gateway.url, person)  # even the right password, while locked out
    assert error(locked) == (429, "rate_limit_error", "login_throttled")
    assert int(locked.headers["retry-after"]) >= 1
    assert tokens(gateway.url, tenant_user(gateway))  # another e-mail is not affected


def test_a_disabled_user_cannot_sign_in(gateway: RunningGateway) -> None:
    person = tenant_user(gateway)

    async def disable() -> None:
        db = Database(db_url(gateway))
        try:
            from switchboard.platform import Platform

            await Platform(db).users.update(person.user.tenant_id, person.user.id, disabled=True)
        finally:
            await db.dispose()

    asyncio.run(disable())
    assert error(login(gateway.url, person))[2] == "invalid_credentials"


def test_refresh_rotates_and_reuse_revokes_the_family(gateway: RunningGateway) -> None:
    pair = tokens(gateway.url, tenant_user(gateway))
    first = refresh(gateway, pair["refresh_token"])
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != pair["refresh_token"]
    assert rotated["session_id"] == pair["session_id"]
    assert me(gateway, rotated["access_token"]).status_code == 200
    reused = refresh(gateway, pair["refresh_token"])  # a stolen copy of the spent token
    assert error(reused) == (401, "authentication_error", "refresh_token_reused")
    # The whole family is gone: the newest refresh token and its access token too.
    assert error(refresh(gateway, rotated["refresh_token"]))[2] == "session_revoked"
    assert error(me(gateway, rotated["access_token"]))[2] == "session_revoked"
    assert error(refresh(gateway, "ses_unknown.whatever"))[2] == "invalid_refresh_token"


def test_logout_stops_the_access_token_at_once(gateway: RunningGateway) -> None:
    pair = tokens(gateway.url, tenant_user(gateway))
    access = pair["access_token"]
    assert me(gateway, access).status_code == 200  # now cached as alive
    out = httpx.post(gateway.url + "/auth/v1/logout", headers=bearer(access), timeout=10)
    assert out.status_code == 204
    assert error(me(gateway, access)) == (401, "authentication_error", "session_revoked")
    assert error(refresh(gateway, pair["refresh_token"]))[2] == "session_revoked"


def test_forged_access_tokens_are_refused(gateway: RunningGateway) -> None:
    pair = tokens(gateway.url, tenant_user(gateway))
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    header, payload, signature = pair["access_token"].split(".")

    def b64(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    forged = [
        jwt.encode(claims, "a-guessed-key-that-is-long-enough-32b", algorithm="HS256"),
        b64({"alg": "none", "typ": "JWT"}) + "." + payload + ".",
        header + "." + b64({**claims, "role": "platform_admin", "tenant": None}) + "." + signature,
        jwt.encode({**claims, "aud": "someone-else"}, signing_key(gateway), algorithm="HS256"),
        "not-a-jwt",
    ]
    for token in forged:
        assert error(me(gateway, token)) == (401, "authentication_error", "invalid_token")


def test_an_expired_access_token_is_refused(gateway: RunningGateway) -> None:
    person = tenant_user(gateway)
    pair = tokens(gateway.url, person)
    stale = AccessTokens(signing_key(gateway), ttl_seconds=-5).issue(
        person.user, pair["session_id"]
    )
    assert error(me(gateway, stale)) == (401, "authentication_error", "token_expired")
    assert me(gateway, pair["access_token"]).status_code == 200


def test_an_idle_session_is_over(gateway: RunningGateway) -> None:
    idle = timedelta(seconds=gateway.settings.session_idle_timeout_seconds + 1)
    pair = tokens(gateway.url, tenant_user(gateway))
    age_session(gateway, pair["session_id"], idle)
    assert error(me(gateway, pair["access_token"]))[2] == "session_expired"
    assert error(refresh(gateway, pair["refresh_token"]))[2] == "session_expired"
    # A session used recently enough keeps going.
    fresh = tokens(gateway.url, tenant_user(gateway))
    age_session(gateway, fresh["session_id"], idle - timedelta(seconds=60))
    assert refresh(gateway, fresh["refresh_token"]).status_code == 200


def test_tokens_are_not_api_keys(gateway: RunningGateway) -> None:
    pair = tokens(gateway.url, tenant_user(gateway))
    chat = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=bearer(pair["access_token"]),
        json={"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert chat.status_code == 401


def test_a_user_changes_their_own_password(gateway: RunningGateway) -> None:
    person = tenant_user(gateway)
    here, elsewhere = tokens(gateway.url, person), tokens(gateway.url, person)
    new = "another fine passphrase"

    def change(current: str, new_password: str) -> httpx.Response:
        return httpx.post(
            gateway.url + "/auth/v1/password",
            headers=bearer(here["access_token"]),
            json={"current_password": current, "new_password": new_password},
            timeout=10,
        )

    assert error(change("not it at all", new))[2] == "invalid_credentials"
    short = change(person.password, "short")
    assert (short.status_code, short.json()["error"]["param"]) == (400, "new_password")
    assert change(person.password, new).status_code == 204
    assert me(gateway, here["access_token"]).status_code == 200  # this session goes on
    assert error(me(gateway, elsewhere["access_token"]))[2] == "session_revoked"
    assert error(login(gateway.url, person))[2] == "invalid_credentials"
    assert login(gateway.url, Person(person.user, new, person.tenant)).status_code == 200

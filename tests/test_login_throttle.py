"""The sign-in throttle: one suite over both backends (in process and Redis), then what only
Redis has (expiring keys without e-mails, the server's clock, two workers sharing counts, an
unreachable server), then the sign-in paths that use it.

Both backends run on a clock the test moves (the Redis one takes it as a script argument), so
windows pass without sleeping. Redis at 127.0.0.1:6379 is required: when it is unreachable
these tests fail with a clear message, they are never skipped. Each test uses a fresh key
prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

import httpx
import pytest
from redis.asyncio import Redis

from conftest import (
    ADMIN_KEY,
    REDIS_URL,
    Clock,
    delete_redis_prefix,
    gateway_config,
    redis_or_fail,
    start_gateway,
)
from fakes.server import ServerThread
from people import Person, add_user, bearer, login
from switchboard.auth.audit import Auditor, ClientInfo
from switchboard.auth.passwords import hash_password
from switchboard.auth.redis_throttle import RedisLoginThrottle
from switchboard.auth.sessions import SessionService
from switchboard.auth.throttle import (
    ATTEMPT_SECONDS,
    LoginAllowance,
    LoginKey,
    LoginThrottle,
    MemoryLoginThrottle,
)
from switchboard.auth.tokens import AccessTokens
from switchboard.errors import AuthenticationFailed, RateLimited
from switchboard.limits import RedisLimiter
from switchboard.platform import Platform
from switchboard.store.tenants import Tenant

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
ALLOW = LoginAllowance(per_address=3, per_account=7, window_seconds=60)
KEY = LoginKey("ten_throttle", "ann@example.com", "198.51.100.7")
SECRET = secrets.token_bytes(32)


def at(address: str) -> LoginKey:
    return KEY._replace(address=address)


@dataclass
class Harness:
    throttle: LoginThrottle
    clock: Clock

    async def fail(self, key: LoginKey, times: int = 1) -> None:
        for _ in range(times):
            await self.throttle.check(key)
            await self.throttle.failed(key)

    async def refused(self, key: LoginKey) -> float:
        """``check`` refuses ``key``: the seconds it says to wait."""
        with pytest.raises(RateLimited) as raised:
            await self.throttle.check(key)
        assert (raised.value.status_code, raised.value.code) == (429, "login_throttled")
        assert raised.value.retry_after is not None
        return raised.value.retry_after


class OnRedis:
    """Throttles on the local Redis under one fresh key prefix, each as a worker of its own
    (its own connection pool), like the replicas of one deployment."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.prefix = f"sb:rl:test:{secrets.token_hex(6)}:login:"
        self._limiters: list[RedisLimiter] = []

    def throttle(
        self,
        allowance: LoginAllowance = ALLOW,
        *,
        secret: bytes = SECRET,
        clock: Clock | None = None,
    ) -> RedisLoginThrottle:
        limiter = RedisLimiter(REDIS_URL, fail_open=False)
        self._limiters.append(limiter)
        return RedisLoginThrottle(
            limiter, allowance, secret=secret, prefix=self.prefix, clock=clock
        )

    async def stored(self) -> list[bytes]:
        return sorted([key async for key in self.redis.scan_iter(match=self.prefix + "*")])

    async def aclose(self) -> None:
        for limiter in self._limiters:
            await limiter.aclose()
        await delete_redis_prefix(self.redis, self.prefix)


@asynccontextmanager
async def redis_throttles() -> AsyncIterator[OnRedis]:
    client = await redis_or_fail("the sign-in throttle tests")
    throttles = OnRedis(client)
    try:
        yield throttles
    finally:
        await throttles.aclose()
        await client.aclose()


@pytest.fixture
async def on_redis() -> AsyncIterator[OnRedis]:
    async with redis_throttles() as throttles:
        yield throttles


@pytest.fixture(params=["memory", "redis"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    clock = Clock()
    if request.param == "memory":
        yield Harness(MemoryLoginThrottle(ALLOW, clock=clock), clock)
        return
    async with redis_throttles() as throttles:
        yield Harness(throttles.throttle(clock=clock), clock)


# --- both backends --------------------------------------------------------------------------


async def test_the_per_address_allowance(h: Harness) -> None:
    await h.fail(KEY, ALLOW.per_address)
    assert await h.refused(KEY) == pytest.approx(60)
    await h.throttle.check(at("203.0.113.9"))  # the same account from elsewhere
    await h.throttle.check(KEY._replace(account="bob@example.com"))
    await h.throttle.check(KEY._replace(tenant="ten_other"))


async def test_the_per_account_allowance_from_many_addresses(h: Harness) -> None:
    for i in range(ALLOW.per_account):  # one failure per address: no address is full
        await h.fail(at(f"10.0.0.{i}"))
        h.clock.now += 1
    assert await h.refused(at("10.0.1.1")) == pytest.approx(60 - ALLOW.per_account)
    assert await h.refused(at("10.0.0.0"))
    await h.throttle.check(KEY._replace(account="bob@example.com"))  # other accounts pass


async def test_retry_after_counts_down_to_the_oldest_failure(h: Harness) -> None:
    for _ in range(ALLOW.per_address):
        await h.fail(KEY)
        h.clock.now += 10
    assert await h.refused(KEY) == pytest.approx(30)  # failures at 0, 10, 20; now 30
    h.clock.now += 29.5
    assert await h.refused(KEY) == 1.0  # never less than a second
    h.clock.now += 0.5  # the first failure leaves the window
    await h.fail(KEY)  # which slides: failures at 10, 20, 60
    assert await h.refused(KEY) == pytest.approx(10)


async def test_a_window_later_the_count_starts_again(h: Harness) -> None:
    await h.fail(KEY, ALLOW.per_address)
    await h.refused(KEY)
    h.clock.now += ALLOW.window_seconds
    await h.fail(KEY, ALLOW.per_address - 1)
    await h.throttle.check(KEY)


async def test_success_clears_the_per_address_count_only(h: Harness) -> None:
    await h.fail(KEY, 2)
    await h.fail(at("10.0.0.2"), 2)
    await h.throttle.check(KEY)
    await h.throttle.succeeded(KEY)
    await h.fail(KEY, 2)  # cleared: 2 more fit (4 would not have)
    await h.throttle.check(KEY)
    await h.throttle.succeeded(KEY)
    await h.fail(at("10.0.0.3"))  # the account's 7th failure: success did not clear those
    await h.refused(at("10.0.0.4"))
    await h.refused(KEY)


async def test_attempts_at_once_get_the_allowance_not_more(h: Harness) -> None:
    outcomes = await asyncio.gather(
        *(h.throttle.check(KEY) for _ in range(10)), return_exceptions=True
    )
    assert [o for o in outcomes if o is not None and not isinstance(o, RateLimited)] == []
    assert outcomes.count(None) == ALLOW.per_address
    for _ in range(ALLOW.per_address):
        await h.throttle.failed(KEY)
    assert await h.refused(KEY) == pytest.approx(60)


async def test_an_attempt_without_an_outcome_stops_counting(h: Harness) -> None:
    for _ in range(ALLOW.per_address):
        await h.throttle.check(KEY)  # say the worker died before it could tell
    assert await h.refused(KEY) == pytest.approx(ATTEMPT_SECONDS)
    h.clock.now += ATTEMPT_SECONDS
    await h.fail(KEY, ALLOW.per_address)
    await h.refused(KEY)


# --- redis only -----------------------------------------------------------------------------


async def test_redis_keys_expire_and_name_no_one(on_redis: OnRedis) -> None:
    throttle = on_redis.throttle()
    address_failures, _, account_failures, _ = throttle.keys(KEY)
    await throttle.check(KEY)
    await throttle.failed(KEY)
    assert await on_redis.stored() == sorted([address_failures.encode(), account_failures.encode()])
    await throttle.check(KEY)  # an attempt under way: its own keys, shorter lived
    stored = await on_redis.stored()
    assert stored == sorted(k.encode() for k in throttle.keys(KEY))
    for name in stored:
        ttl = await on_redis.redis.pttl(name)
        longest = 60_000 if name.endswith(b":f") else ATTEMPT_SECONDS * 1000
        assert 0 < ttl <= longest, name
        members = cast("list[bytes]", await on_redis.redis.zrange(name, 0, -1))
        for text in (name, *members):
            for plain in (b"ann", b"example", b"198.51", b"ten_throttle"):
                assert plain not in text.lower(), (plain, text)
    other = on_redis.throttle(secret=b"another deployment")
    assert set(other.keys(KEY)).isdisjoint(throttle.keys(KEY))  # the hash is keyed


async def test_redis_counts_on_the_server_clock(on_redis: OnRedis) -> None:
    throttle = on_redis.throttle(LoginAllowance(per_address=1, per_account=5, window_seconds=0.5))
    await throttle.check(KEY)
    await throttle.failed(KEY)
    with pytest.raises(RateLimited) as raised:
        await throttle.check(KEY)
    assert raised.value.retry_after == 1.0  # 0.5 s left, rounded up to a second
    await asyncio.sleep(0.6)
    await throttle.check(KEY)


async def test_two_workers_on_one_redis_count_together(on_redis: OnRedis) -> None:
    first, second = on_redis.throttle(), on_redis.throttle()
    for i in range(ALLOW.per_address):
        throttle = first if i % 2 else second
        await throttle.check(KEY)
        await throttle.failed(KEY)
    for throttle in (first, second):
        with pytest.raises(RateLimited, match="too many failed sign-in attempts"):
            await throttle.check(KEY)


async def test_unreachable_redis_fails_open_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RedisLimiter(UNREACHABLE, fail_open=True)
    throttle = RedisLoginThrottle(limiter, ALLOW, secret=SECRET)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="switchboard.limits"):
            for _ in range(ALLOW.per_address * 3):  # nothing counts while Redis is away
                await throttle.check(KEY)
                await throttle.failed(KEY)
            await throttle.succeeded(KEY)
    finally:
        await limiter.aclose()
    assert time.monotonic() - started < 5
    warnings = [r for r in caplog.records if r.name == "switchboard.limits"]
    assert len(warnings) == 1
    assert "failing open (login check)" in warnings[0].getMessage()


# --- the sign-in paths ----------------------------------------------------------------------

CLIENT = ClientInfo(ip="192.0.2.10", user_agent="pytest")
PASSWORD = "correct horse battery staple"


def sessions(platform: Platform, throttle: LoginThrottle) -> SessionService:
    return SessionService(
        platform,
        AccessTokens(SECRET, ttl_seconds=300),
        Auditor(platform.audit),
        throttle,
        idle_timeout=timedelta(hours=1),
        max_age=timedelta(hours=8),
        check_ttl=60.0,
    )


async def wrong_login(service: SessionService, tenant: str, email: str) -> None:
    with pytest.raises(AuthenticationFailed):
        await service.login(tenant, email, "not the password", CLIENT)


async def account(platform: Platform) -> tuple[Tenant, str]:
    """A new tenant with one local user: the tenant and the user's e-mail."""
    tenant = await platform.tenants.create(f"thr-{secrets.token_hex(4)}", usage_mode="hybrid")
    email = f"ann-{secrets.token_hex(4)}@example.com"
    await platform.users.create(
        tenant.id, email, role="user", password_hash=await hash_password(PASSWORD)
    )
    return tenant, email


async def test_two_session_services_on_one_redis_share_the_throttle(
    platform: Platform, on_redis: OnRedis
) -> None:
    """Two workers: failures on either count for both, by tenant slug or id alike."""
    tenant, email = await account(platform)
    one, two = (sessions(platform, on_redis.throttle()) for _ in range(2))
    await wrong_login(one, tenant.slug, email)
    await wrong_login(two, tenant.id, email)
    await wrong_login(one, tenant.id, email.upper())
    for service in (one, two):
        with pytest.raises(RateLimited) as raised:  # even with the right password
            await service.login(tenant.slug, email, PASSWORD, CLIENT)
        assert raised.value.code == "login_throttled"


async def test_password_changes_count_towards_the_sign_in_throttle(platform: Platform) -> None:
    tenant, email = await account(platform)
    service = sessions(platform, MemoryLoginThrottle(ALLOW))
    pair = await service.login(tenant.slug, email, PASSWORD, CLIENT)
    principal = await service.authenticate(pair.access_token)
    for _ in range(ALLOW.per_address):
        with pytest.raises(AuthenticationFailed):
            await service.change_password(principal, "a wrong guess", "a new password!", CLIENT)
    with pytest.raises(RateLimited):
        await service.change_password(principal, PASSWORD, "a new password!", CLIENT)
    with pytest.raises(RateLimited):
        await service.login(tenant.slug, email, PASSWORD, CLIENT)


@pytest.mark.slow
def test_two_gateways_on_one_redis_throttle_sign_in_together(
    tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    """Through POST /auth/v1/login of two gateways sharing the database and Redis."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    config = gateway_config(fake_openai.url, fake_ollama.url)
    limits = {"limits_url": REDIS_URL, "login_max_failures": 2, "login_lockout_seconds": 30}
    first, app = start_gateway(tmp_path / "a", database, config, **limits)
    second, _ = start_gateway(tmp_path / "b", database, config, **limits)
    with first, second:
        slug = f"thr-{secrets.token_hex(4)}"
        created = httpx.post(
            first.url + "/admin/v1/tenants", json={"slug": slug}, headers=bearer(ADMIN_KEY)
        )
        assert created.status_code == 201, created.text
        person = add_user(database, slug, "user")
        wrong = Person(person.user, "not the password", slug)
        try:
            assert login(first.url, wrong).status_code == 401
            assert login(second.url, wrong).status_code == 401
            for server in (first, second):
                locked = login(server.url, person)  # the right password, on either gateway
                assert locked.status_code == 429
                assert locked.json()["error"]["code"] == "login_throttled"
                assert locked.json()["error"]["type"] == "rate_limit_error"
                assert 1 <= int(locked.headers["retry-after"]) <= 30
        finally:
            throttle = app.state.runtime.throttle
            assert isinstance(throttle, RedisLoginThrottle)
            key = LoginKey(created.json()["id"], person.user.email, "127.0.0.1")
            asyncio.run(_delete(throttle.keys(key)))


async def _delete(keys: list[str]) -> None:
    client = await redis_or_fail("the sign-in throttle tests")
    try:
        await client.delete(*keys)
    finally:
        await client.aclose()

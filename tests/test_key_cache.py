"""The API key cache: one lookup per key at a time, refresh ahead of the TTL, and forget().

The repository here is a fake that counts lookups and can be held at a gate, and the cache runs
on a hand-moved clock, so nothing depends on how fast this machine is."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from conftest import Clock
from switchboard.auth.keys import REFRESH_AHEAD, Caller, KeyAuthenticator
from switchboard.errors import AuthenticationFailed
from switchboard.store.keys import ApiKey, KeyRepository
from switchboard.store.tenants import Tenant

TTL = 10.0
SECRET = "sk-sb-the-only-key"
NOW = datetime(2025, 1, 1, tzinfo=UTC)
TENANT = Tenant("ten_1", "acme", "Acme", "hybrid", NOW)
KEY = ApiKey("key_1", TENANT.id, "ci", "sk-sb-the-", NOW, None, None)


class FakeKeys(KeyRepository):
    """Answers from ``rows``, read when the lookup starts (as a database read before a change
    would be). While ``hold`` is set, each lookup waits until ``release`` lets it go; ``fail``
    makes lookups raise."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[ApiKey, Tenant]] = {SECRET: (KEY, TENANT)}
        self.calls = 0
        self.hold = False
        self.held: list[asyncio.Event] = []
        self.fail: Exception | None = None
        self._entered = asyncio.Condition()

    async def find_by_secret(self, secret: str) -> tuple[ApiKey, Tenant] | None:
        found = self.rows.get(secret)
        gate = asyncio.Event()
        if self.hold:
            self.held.append(gate)
        else:
            gate.set()
        async with self._entered:
            self.calls += 1
            self._entered.notify_all()
        await gate.wait()
        if self.fail is not None:
            raise self.fail
        return found

    async def entered(self, calls: int) -> None:
        """Wait until ``calls`` lookups have started."""
        async with self._entered:
            await self._entered.wait_for(lambda: self.calls >= calls)

    def release(self, *which: int) -> None:
        """Let the held lookups go (the n-th held ones, or all), and hold no more."""
        self.hold = False
        for i in which or range(len(self.held)):
            self.held[i].set()

    def mark_revoked(self) -> None:
        key, tenant = self.rows[SECRET]
        self.rows[SECRET] = (replace(key, revoked_at=NOW), tenant)


@pytest.fixture
def keys() -> FakeKeys:
    return FakeKeys()


@pytest.fixture
def clock() -> Clock:
    return Clock(0.0)


@pytest.fixture
async def auth(keys: FakeKeys, clock: Clock) -> KeyAuthenticator:
    return KeyAuthenticator(keys, ttl=TTL, clock=clock)


async def started(auth: KeyAuthenticator, keys: FakeKeys, *, lookups: int, in_flight: int) -> None:
    """Let the new requests run up to their first wait, check how many lookups are under way
    (so a missing one fails here rather than hanging below), and wait until ``lookups`` have
    reached the database."""
    await asyncio.sleep(0)
    assert len(auth._tasks) == in_flight
    await keys.entered(lookups)


async def refresh_held(auth: KeyAuthenticator, keys: FakeKeys, clock: Clock) -> None:
    """Cache the key, then use it past the refresh point: it is served at once, and its
    refresh reads the database and is held there."""
    await auth.authenticate(SECRET)
    clock.now = TTL * REFRESH_AHEAD + 0.5
    keys.hold = True
    assert (await auth.authenticate(SECRET)).key.id == KEY.id
    await started(auth, keys, lookups=2, in_flight=1)


async def burst(
    auth: KeyAuthenticator, keys: FakeKeys, token: str, requests: int, *, lookups: int
) -> list[Caller | BaseException]:
    """``requests`` requests at once while the database is held; what each one got once the
    one lookup they need (the ``lookups``-th) is let go."""
    keys.hold = True
    waiting = [asyncio.create_task(auth.authenticate(token)) for _ in range(requests)]
    await started(auth, keys, lookups=lookups, in_flight=1)
    keys.release()
    return await asyncio.gather(*waiting, return_exceptions=True)


async def settled(auth: KeyAuthenticator) -> None:
    """Wait for the lookups under way (background refreshes included) to end."""
    await asyncio.gather(*list(auth._tasks), return_exceptions=True)


async def test_concurrent_requests_on_a_stale_entry_share_one_lookup(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    await auth.authenticate(SECRET)
    assert keys.calls == 1
    clock.now = TTL + 1  # stale: requests must wait for a lookup
    callers = await burst(auth, keys, SECRET, 32, lookups=2)
    assert {c.key.id for c in callers if isinstance(c, Caller)} == {KEY.id}
    assert len(callers) == 32
    assert keys.calls == 2
    await auth.authenticate(SECRET)  # and its answer is cached
    assert keys.calls == 2


async def test_concurrent_requests_on_an_uncached_key_share_one_lookup(
    auth: KeyAuthenticator, keys: FakeKeys
) -> None:
    callers = await asyncio.gather(*(auth.authenticate(SECRET) for _ in range(32)))
    assert len(callers) == 32
    assert keys.calls == 1


async def test_refresh_ahead_serves_the_cached_entry_and_looks_up_once(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    await auth.authenticate(SECRET)
    key, tenant = keys.rows[SECRET]
    keys.rows[SECRET] = (replace(key, name="renamed"), tenant)
    clock.now = TTL * REFRESH_AHEAD + 0.5  # past the refresh point, within the TTL
    keys.hold = True  # the refresh cannot finish: the requests must not wait for it
    for _ in range(10):
        assert (await auth.authenticate(SECRET)).key.name == "ci"
    await started(auth, keys, lookups=2, in_flight=1)
    assert keys.calls == 2
    keys.release()
    await settled(auth)
    assert (await auth.authenticate(SECRET)).key.name == "renamed"
    # The refreshed entry counts its TTL from its own lookup: past the first entry's TTL it is
    # still fresh, and no further lookup is made.
    clock.now = TTL + 1
    assert (await auth.authenticate(SECRET)).key.name == "renamed"
    assert keys.calls == 2


async def test_forget_during_a_refresh_does_not_bring_the_old_entry_back(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    await refresh_held(auth, keys, clock)  # it read the key before the revocation below
    keys.mark_revoked()
    auth.forget(key_id=KEY.id)  # what the admin API does after revoking
    keys.release()
    await settled(auth)  # the refresh lands with what it read before the revocation
    with pytest.raises(AuthenticationFailed) as refused:
        await auth.authenticate(SECRET)
    assert refused.value.code == "revoked_api_key"
    assert keys.calls == 3


async def test_a_request_after_forget_does_not_join_an_older_lookup(
    auth: KeyAuthenticator, keys: FakeKeys
) -> None:
    keys.hold = True
    before = asyncio.create_task(auth.authenticate(SECRET))
    await started(auth, keys, lookups=1, in_flight=1)
    keys.mark_revoked()
    auth.forget(tenant_id=TENANT.id)
    after = asyncio.create_task(auth.authenticate(SECRET))
    await started(auth, keys, lookups=2, in_flight=2)  # a lookup of its own
    keys.release()
    assert (await before).key.id == KEY.id  # it asked before the change
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await after
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(SECRET)  # the older answer was not cached
    assert keys.calls == 2


async def test_forget_drops_entries_at_once(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    await auth.authenticate(SECRET)
    keys.mark_revoked()
    auth.forget(key_id=KEY.id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(SECRET)
    assert keys.calls == 2


async def test_a_lookup_older_than_the_ttl_is_not_joined(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    """A request is never answered from a read older than the TTL, however slow the database."""
    keys.hold = True
    slow = asyncio.create_task(auth.authenticate(SECRET))
    await started(auth, keys, lookups=1, in_flight=1)
    clock.now = TTL / 2
    joined = asyncio.create_task(auth.authenticate(SECRET))
    await started(auth, keys, lookups=1, in_flight=1)  # joined the lookup under way
    clock.now = TTL + 1
    keys.mark_revoked()
    late = asyncio.create_task(auth.authenticate(SECRET))
    await started(auth, keys, lookups=2, in_flight=2)
    keys.release(1)  # the newer lookup lands first
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await late
    keys.release(0)
    assert (await slow).key.id == KEY.id
    assert (await joined).key.id == KEY.id
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(SECRET)  # the slow lookup's older answer did not replace it
    assert keys.calls == 2


async def test_a_failed_lookup_fails_every_waiter_and_the_next_request_retries(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    await auth.authenticate(SECRET)
    clock.now = TTL + 1
    keys.fail = ConnectionError("database unreachable")
    results = await burst(auth, keys, SECRET, 8, lookups=2)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert keys.calls == 2
    keys.fail = None
    assert (await auth.authenticate(SECRET)).key.id == KEY.id
    assert keys.calls == 3
    await auth.authenticate(SECRET)
    assert keys.calls == 3


async def test_a_failed_first_lookup_caches_nothing(auth: KeyAuthenticator, keys: FakeKeys) -> None:
    keys.fail = ConnectionError("database unreachable")
    with pytest.raises(ConnectionError):
        await auth.authenticate(SECRET)
    keys.fail = None
    assert (await auth.authenticate(SECRET)).key.id == KEY.id
    assert keys.calls == 2


async def test_a_failed_refresh_keeps_serving_the_entry_until_its_ttl(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    await auth.authenticate(SECRET)
    clock.now = TTL * REFRESH_AHEAD + 0.5
    keys.fail = ConnectionError("database unreachable")
    assert (await auth.authenticate(SECRET)).key.id == KEY.id
    await settled(auth)
    assert keys.calls == 2
    assert "looking up a cached API key again failed" in caplog.text
    assert (await auth.authenticate(SECRET)).key.id == KEY.id  # still served, tried again
    await settled(auth)
    assert keys.calls == 3
    clock.now = TTL + 1
    with pytest.raises(ConnectionError):
        await auth.authenticate(SECRET)
    gc.collect()  # a failed refresh nobody awaited is not reported as never retrieved
    assert "never retrieved" not in caplog.text


async def test_a_cancelled_request_does_not_cancel_the_lookup_others_wait_for(
    auth: KeyAuthenticator, keys: FakeKeys
) -> None:
    keys.hold = True
    leaving = asyncio.create_task(auth.authenticate(SECRET))
    staying = asyncio.create_task(auth.authenticate(SECRET))
    await started(auth, keys, lookups=1, in_flight=1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    keys.release()
    assert (await staying).key.id == KEY.id
    await auth.authenticate(SECRET)
    assert keys.calls == 1


async def test_unknown_keys_are_cached_and_share_one_lookup(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    bad = "sk-sb-no-such-key"
    results = await burst(auth, keys, bad, 16, lookups=1)
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert keys.calls == 1
    for _ in range(5):
        with pytest.raises(AuthenticationFailed, match="invalid API key"):
            await auth.authenticate(bad)
    assert keys.calls == 1
    clock.now = TTL + 1
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(bad)
    assert keys.calls == 2


async def test_aclose_cancels_refreshes_under_way(
    auth: KeyAuthenticator, keys: FakeKeys, clock: Clock
) -> None:
    await refresh_held(auth, keys, clock)
    (refresh,) = auth._tasks
    closing = asyncio.create_task(auth.aclose())
    await asyncio.sleep(0)
    assert refresh.cancelling()  # asked to stop, not waited for until the gate opens
    await closing
    assert refresh.cancelled()
    assert not auth._tasks


async def test_ttl_zero_asks_the_database_on_every_request(keys: FakeKeys, clock: Clock) -> None:
    auth = KeyAuthenticator(keys, ttl=0, clock=clock)
    for i in range(3):
        clock.now = float(i)
        await auth.authenticate(SECRET)
    assert keys.calls == 3
    keys.mark_revoked()
    clock.now = 3.0
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(SECRET)
    await auth.aclose()

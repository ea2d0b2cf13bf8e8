"""The response cache: one suite over the in-process and the Redis backend, the key's
canonical form and tenant isolation, opt-out, and stream <-> completion round trips."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from conftest import Clock
from switchboard.gateway.assemble import assemble, replay
from switchboard.gateway.cache import (
    MemoryCache,
    RedisCache,
    ResponseCache,
    allows_cache,
    cache_key,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _require_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except OSError as exc:  # redis' ConnectionError is an OSError
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}", pytrace=False)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def cache(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[ResponseCache, Clock | None]]:
    if request.param == "memory":
        clock = Clock(100.0)
        yield MemoryCache(max_entries=3, clock=clock), clock
        return
    await _require_redis()
    prefix = f"sb:test:{secrets.token_hex(4)}:"
    backend = RedisCache(REDIS_URL, prefix=prefix)
    yield backend, None
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await backend.aclose()


async def _expire(cache: tuple[ResponseCache, Clock | None], seconds: float) -> None:
    _backend, clock = cache
    if clock is not None:
        clock.now += seconds
    else:
        await asyncio.sleep(seconds)


async def test_set_get_and_expiry(cache: tuple[ResponseCache, Clock | None]) -> None:
    backend, _ = cache
    key = cache_key("t1", "chat", _body())
    assert await backend.get(key) is None
    await backend.set(key, b'{"answer":42}', ttl_seconds=0.3)
    assert await backend.get(key) == {"answer": 42}
    assert await backend.get(cache_key("t2", "chat", _body())) is None  # another tenant
    await _expire(cache, 0.4)
    assert await backend.get(key) is None


async def test_memory_cache_is_bounded_lru() -> None:
    clock = Clock(100.0)
    backend = MemoryCache(max_entries=2, clock=clock)
    a, b, c = (b"t1\0" + name for name in (b"a", b"b", b"c"))
    await backend.set(a, b'{"v":1}', 60)
    await backend.set(b, b'{"v":2}', 60)
    assert await backend.get(a) == {"v": 1}  # a is now the most recently used
    await backend.set(c, b'{"v":3}', 60)
    assert await backend.get(b) is None
    assert await backend.get(a) == {"v": 1}


async def test_memory_cache_is_bounded_by_bytes() -> None:
    backend = MemoryCache(max_entries=100, clock=Clock(100.0), max_bytes=100)
    keys = [b"t1\0" + bytes([65 + i]) * 7 for i in range(4)]  # ten bytes each
    for key in keys[:3]:
        await backend.set(key, b'"' + b"x" * 28 + b'"', 60)  # 30 bytes: 40 with its key
    assert backend.size_bytes == 80  # two fit: the first went
    assert await backend.get(keys[0]) is None
    assert await backend.get(keys[1]) is not None
    await backend.set(keys[3], b'"' + b"y" * 200 + b'"', 60)  # alone larger than the bound
    assert await backend.get(keys[3]) is None
    assert backend.size_bytes == 80  # nothing was pushed out for it
    await backend.set(keys[1], b'"z"', 60)  # replaced: its old size given back
    assert backend.size_bytes == 40 + 13


async def test_an_expired_entry_gives_its_bytes_back() -> None:
    clock = Clock(100.0)
    backend = MemoryCache(clock=clock)
    await backend.set(b"t1\0k", b'{"v":1}', 10)
    assert backend.size_bytes == 4 + 7
    clock.now += 11
    assert await backend.get(b"t1\0k") is None
    assert backend.size_bytes == 0


def test_a_long_conversation_makes_a_short_key() -> None:
    """Keys hold a digest: ten thousand of them stay small whatever the requests carry."""
    long = _body(messages=[{"role": "user", "content": "x" * 100_000}])
    key = cache_key("ten_a", "chat", long)
    assert len(key) == len(b"ten_a\0") + 32
    assert key != cache_key("ten_a", "chat", _body(messages=[{"role": "user", "content": "x"}]))


async def test_an_unreachable_redis_is_a_miss_not_an_error() -> None:
    backend = RedisCache("redis://127.0.0.1:9/0")
    try:
        await backend.set(b"t1\0k", b'{"v":1}', 10)
        assert await backend.get(b"t1\0k") is None
    finally:
        await backend.aclose()


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_key_ignores_what_does_not_change_the_answer() -> None:
    plain = cache_key("t1", "chat", _body())
    assert (
        cache_key("t1", "chat", _body(stream=True, stream_options={"include_usage": True})) == plain
    )
    assert cache_key("t1", "chat", _body(user="alice")) == plain
    assert cache_key("t1", "chat", {"messages": _body()["messages"], "model": "m"}) == plain
    assert cache_key("t1", "chat", _body(temperature=0.5)) != plain
    assert cache_key("t1", "embeddings", _body()) != plain


async def test_tenants_never_share_an_entry() -> None:
    a, b = cache_key("ten_a", "chat", _body()), cache_key("ten_b", "chat", _body())
    assert a != b
    assert a.startswith(b"ten_a\0")
    assert b.startswith(b"ten_b\0")
    assert a.endswith(b.removeprefix(b"ten_b"))  # the same request after the tenant
    redis = RedisCache("redis://127.0.0.1:9/0", prefix="sb:cache:")  # never connects
    try:
        # The digest of the canonical request names the Redis key.
        canonical = orjson.dumps(["chat", _body()], option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(canonical).hexdigest()
        assert redis.redis_key(a) == f"sb:cache:ten_a:{digest}"
        assert redis.redis_key(a) != redis.redis_key(b)
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, True),
        ("", True),
        ("max-age=60", True),
        ("no-cache", False),
        ("private, No-Store", False),
    ],
)
def test_cache_control_opt_out(header: str | None, allowed: bool) -> None:
    assert allows_cache(header) is allowed


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def test_a_text_stream_assembles_and_replays() -> None:
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Echo:"}),
        _chunk({"content": " hi"}),
        _chunk({}, "stop"),
        {**_chunk({}), "choices": [], "usage": usage},
    ]
    completion = assemble(chunks)
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hi"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"] == usage
    again = replay(completion, include_usage=True)
    assert assemble(again)["choices"] == completion["choices"]
    assert again[-1]["choices"] == []
    assert again[-1]["usage"] == usage
    assert all(c["choices"] for c in replay(completion, include_usage=False))


def test_a_tool_call_stream_assembles_from_fragments() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    chunks = [
        _chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ation": "Paris"}'}}]}),
        _chunk({}, "tool_calls"),
    ]
    message = assemble(chunks)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
        }
    ]
    replayed = replay(assemble(chunks), include_usage=False)
    assert assemble(replayed)["choices"][0]["message"] == message
    assert replayed[-1]["choices"][0]["finish_reason"] == "tool_calls"

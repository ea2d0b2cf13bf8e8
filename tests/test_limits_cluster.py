"""Two OS processes hammer one Redis-backed tenant limit at once: the total they admit is the
limit, never more.

Each process stands for a gateway replica with its own API key: every request checks the shared
tenant rule (500 per hour) and the replica's key rule (400 per hour) in one `admit`. The hour
window keeps GCRA's refill out of the count (one request comes back every 7.2 s, the run lasts
at most 3 s), so exactly 500 may pass; a lost update or a race between the replicas would show
as more, a request refused for no reason as fewer. Run this file as a script to get one worker.
Redis at 127.0.0.1:6379 is required; the test fails, never skips, without it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time

import pytest

from switchboard.limits import RedisLimiter, Rule, key_scope, tenant_scope

REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT_RULE = Rule("requests", 500, 3600)
KEY_RULE = Rule("requests", 400, 3600)
CONCURRENCY = 50  # admits in flight per process
MAX_ATTEMPTS = 4000  # per process
MAX_SECONDS = 3.0  # per process, once started


async def hammer(prefix: str, key_id: str, start_at: float) -> dict[str, int]:
    limiter = RedisLimiter(REDIS_URL, prefix, fail_open=False, timeout=5)
    checks = [(tenant_scope("shared"), TENANT_RULE, 1), (key_scope(key_id), KEY_RULE, 1)]
    counts = {"attempts": 0, "admitted": 0, "refused": 0}
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + MAX_SECONDS

        async def worker() -> None:
            while counts["attempts"] < MAX_ATTEMPTS and time.monotonic() < deadline:
                counts["attempts"] += 1
                decision = await limiter.admit(checks)
                counts["admitted" if decision.allowed else "refused"] += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await limiter.aclose()
    return counts


def _spawn(prefix: str, key_id: str, start_at: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, prefix, key_id, repr(start_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ensure_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} for the cluster test: {exc}", pytrace=False)
    finally:
        client.close()


def _cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.mark.slow
def test_two_processes_admit_exactly_the_shared_limit() -> None:
    _ensure_redis()
    prefix = f"sb:rl:test:{secrets.token_hex(6)}:"
    start_at = time.time() + 2.0  # both start hammering at the same moment
    procs = [_spawn(prefix, f"replica-{i}", start_at) for i in range(2)]
    results: list[dict[str, int]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        _cleanup(prefix)
    admitted = [r["admitted"] for r in results]
    total = sum(admitted)
    print(f"admitted per process {admitted}, attempts {[r['attempts'] for r in results]}")
    assert total <= TENANT_RULE.limit
    assert total >= TENANT_RULE.limit * 0.99
    assert all(0 < n <= KEY_RULE.limit for n in admitted)  # both raced; each key rule held
    for r in results:
        assert r["admitted"] + r["refused"] == r["attempts"]
        assert r["refused"] > 0  # each process kept asking past the limit


if __name__ == "__main__":
    counts = asyncio.run(hammer(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    print(json.dumps(counts))

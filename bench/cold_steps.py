"""What the tenant-policy steps cost per request when the CPU caches are cold, as in a server.

In a tight loop a step's code and data stay in the CPU caches; in the running gateway the other
requests' work evicts them between two uses, and the same step costs about three times as
much. This script times each step both ways: hot (call after call) and cold (a 4 MiB copy
evicts the caches before each call). The cold figures track what `ab.py` measures in the server
far better than the hot ones, and they are steady on a busy machine. Run by hand:

    python bench/cold_steps.py [--calls 20000] [--evict-bytes 4194304]

Steps, for the bare tenant and for `tenant-governed.json` (bench/):
- admission and settlement (`RequestLimits`, in-process stores, budgets seeded);
- the guardrails (`screen`), on a plain prompt, on one with numbers in it and on one with a
  phone number;
- the response cache on a miss (key, lookup, store) with 10,000 entries held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from policy_overhead import ANSWER, caller

from switchboard.auth.keys import Caller
from switchboard.gateway.budgeting import WorstPrice
from switchboard.gateway.cache import MemoryCache, cache_key
from switchboard.gateway.limiting import RequestLimits
from switchboard.gateway.scopes import Demand
from switchboard.gateway.screening import screen
from switchboard.limits import MemoryLimiter
from switchboard.limits.budgets import MemoryBudgets, month_of
from switchboard.metering.usage import UsageEvent

HERE = Path(__file__).parent
BODY: dict[str, Any] = {
    "model": "fake-gpt",
    "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    "max_tokens": 64,
}
# Digits enough for the PII detectors to look, and nothing they report (a date, an amount);
# then a phone number (the bench policy logs phone numbers).
NUMBERS: dict[str, Any] = {
    **BODY,
    "messages": [{"role": "user", "content": "Summarise the 2026-11-23 meeting: 1250000 EUR."}],
}
PHONE: dict[str, Any] = {
    **BODY,
    "messages": [{"role": "user", "content": "Call me back on +49 30 1234 5678, thanks."}],
}
PRICE = WorstPrice(0.15, 0.6)


def timed(step: Callable[[int], object], calls: int, evict: bytearray | None) -> float:
    """Microseconds per call of ``step(i)``, evicting the caches before each call if asked."""
    filler = bytes(len(evict)) if evict is not None else b""
    total = 0.0
    for i in range(calls):
        if evict is not None:
            evict[:] = filler
        started = time.perf_counter()
        step(i)
        total += time.perf_counter() - started
    return total / calls * 1e6


def limits_step(who: Caller) -> Callable[[int], object]:
    limits = RequestLimits(MemoryLimiter(), MemoryBudgets(), settle_every=3600)
    assert limits.budgets is not None
    month = month_of(datetime.now(UTC))
    asyncio.run(limits.budgets.store.seed("tenant:ten_1", month, 0))

    def demand(_: object) -> Demand:
        return (10, 64)

    def price(*_: object) -> WorstPrice:
        return PRICE

    def step(_: int) -> None:
        event = UsageEvent(
            request_id="r",
            tenant_id="ten_1",
            key_id="key_1",
            user_id=None,
            created_at=datetime.now(UTC),
            endpoint="chat",
        )
        if not limits.admit_at_once(who, event, demand, None, price):
            raise SystemExit("the bench policy refused a request: raise its limits")
        event.tokens_input, event.tokens_output, event.cost_usd = 10, 9, 0.00001
        limits._flush_scheduled = True  # no event loop here: settle without scheduling a flush
        limits.settle(event)

    return step


def cache_step() -> Callable[[int], object]:
    cache = MemoryCache(max_entries=10_000)

    def step(i: int) -> None:
        body = {**BODY, "messages": [{"role": "user", "content": f"Hello there {i}"}]}
        key = cache_key("ten_1", "chat", body)
        if cache.lookup(key) is None:
            cache.keep(key, orjson.dumps(ANSWER), 3600)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--evict-bytes", type=int, default=4 << 20)
    args = parser.parse_args()
    gc.freeze()  # as the server does after start-up (switchboard.heap)
    gc.set_threshold(20_000, 10, 10)
    governed = json.loads((HERE / "tenant-governed.json").read_text())
    bare_caller, governed_caller = caller({}), caller(governed)
    steps: list[tuple[str, Callable[[], Callable[[int], object]]]] = [
        ("admission + settlement, bare", lambda: limits_step(bare_caller)),
        ("admission + settlement, governed", lambda: limits_step(governed_caller)),
        ("guardrails, bare", lambda: lambda _: screen(bare_caller, BODY)),
        ("guardrails, governed", lambda: lambda _: screen(governed_caller, BODY)),
        ("guardrails, governed, numbers", lambda: lambda _: screen(governed_caller, NUMBERS)),
        ("guardrails, governed, a phone number", lambda: lambda _: screen(governed_caller, PHONE)),
        ("response cache miss (key, lookup, store)", cache_step),
    ]
    evict = bytearray(args.evict_bytes)
    print(f"{'step':44} {'hot us':>8} {'cold us':>8}")
    for name, make in steps:
        hot = timed(make(), args.calls, None)
        cold = timed(make(), args.calls, evict)
        print(f"{name:44} {hot:8.2f} {cold:8.2f}")


if __name__ == "__main__":
    main()

"""What the tenant-policy steps cost per request, in process, without HTTP or an upstream.

Runs `Gateway.chat` and `Gateway.stream_chat` against an in-memory provider that answers at
once, for a bare tenant and for one with `tenant-governed.json` (limits, budget, guardrails,
PII), and prints microseconds per request for each and the difference. The HTTP benchmark
(`run.py`) says what a client sees; this says which share of it the policy steps are, with
less noise on a busy machine. Run by hand:

    python bench/policy_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from switchboard.auth.keys import Caller
from switchboard.config import parse_config
from switchboard.gateway import Gateway, Router, build_catalog
from switchboard.gateway.limiting import RequestLimits
from switchboard.gateway.scopes import Subject
from switchboard.limits import MemoryLimiter
from switchboard.limits.budgets import MemoryBudgets
from switchboard.metering import PriceTable
from switchboard.metering.usage import UsageEvent
from switchboard.policy.tenant_config import TenantConfig
from switchboard.store.keys import ApiKey
from switchboard.store.tenants import Tenant

HERE = Path(__file__).parent
BODY: dict[str, Any] = {
    "model": "fake-gpt",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write two sentences about the sea, please."},
    ],
    "max_tokens": 64,
}
ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The sea is wide. It is deep."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
}


class InstantProvider:
    name = "instant"
    locality = "external"

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(json.dumps(ANSWER))
        return answer

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        return _chunks()

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


async def _chunks() -> AsyncIterator[list[dict[str, Any]]]:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    for word in ("The ", "sea ", "is ", "wide."):
        yield [{**base, "choices": [{"index": 0, "delta": {"content": word}}]}]
    yield [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    yield [{**base, "choices": [], "usage": ANSWER["usage"]}]


async def _nothing_spent(subject: Subject, month: str) -> float:
    return 0.0


def limits() -> RequestLimits:
    """The limits step as `switchboard serve` wires it without Redis: in-process rates and
    budgets, the ledger's spend read when a budget counter is first needed (here: none)."""
    return RequestLimits(MemoryLimiter(), MemoryBudgets(), spend=_nothing_spent)


class NullRecorder:
    def record(self, event: UsageEvent) -> None:
        return None


def caller(config: dict[str, Any]) -> Caller:
    now = datetime.now(UTC)
    key = ApiKey("key_1", "ten_1", "bench", "sk-sb-xx", now, None, None)
    return Caller(key, Tenant("ten_1", "bench", "bench", "hybrid", now), TenantConfig(**config))


async def run(gateway: Gateway, who: Caller, n: int, stream: bool) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with gateway.metered(who, "chat") as event:
            if stream:
                out = await gateway.stream_chat(who, event, dict(BODY), include_usage=True)
                async for _batch in out:
                    pass
                await out.aclose()
            else:
                await gateway.chat(who, event, dict(BODY))
        await asyncio.sleep(0)  # let the loop run what a server would between requests
    await asyncio.sleep(0.1)  # let batched settlements run
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    config = parse_config(
        """
providers:
  - {name: instant, kind: openai, base_url: "http://127.0.0.1:9/v1", locality: external}
models:
  - name: fake-gpt
    deployments: [{provider: instant, model: gpt-4o-mini}]
""",
        source="<bench>",
    )
    catalog = await build_catalog(config, {"instant": InstantProvider()}, PriceTable())  # type: ignore[dict-item]
    gateway = Gateway(Router(catalog, config.router), NullRecorder(), limits=limits())  # type: ignore[arg-type]
    governed = json.loads((HERE / "tenant-governed.json").read_text())
    for stream in (False, True):
        kind = "stream" if stream else "json"
        await run(gateway, caller({}), 2000, stream)  # warm up
        bare = await run(gateway, caller({}), args.requests, stream)
        policy = await run(gateway, caller(governed), args.requests, stream)
        print(
            f"{kind:6} bare {bare:7.1f} us/request   governed {policy:7.1f} us/request   "
            f"policy steps +{policy - bare:6.1f} us"
        )


if __name__ == "__main__":
    asyncio.run(main())

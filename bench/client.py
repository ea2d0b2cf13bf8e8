"""Micro-benchmark: the upstream side alone. One OpenAI-compatible provider adapter (its HTTP
client, request encoding, response decoding) calls the peers kit's fake upstream, without the
gateway around it, and the CPU time of this process per call is printed.

    python bench/client.py                              # chat, c=1 and c=32, 3000 calls each
    python bench/client.py --mode stream --concurrency 32
    valgrind --tool=callgrind python bench/client.py --requests 500 --concurrency 1

CPU time per call is what to compare between versions; under callgrind, compare instruction
counts of two runs with different ``--requests`` (the difference is the per-call cost, start-up
cancels out), which stay steady on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import uvloop
from run import start_upstream

from switchboard.config import ProviderConfig
from switchboard.providers import build_provider
from switchboard.providers.base import Provider

ROOT = Path(__file__).resolve().parent.parent
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 32,
}


async def one(provider: Provider, stream: bool) -> None:
    if not stream:
        await provider.chat(BODY)
        return
    chunks = await provider.stream_chat(BODY)
    try:
        async for _ in chunks:
            pass
    finally:
        await chunks.aclose()


async def run(provider: Provider, requests: int, concurrency: int, stream: bool) -> None:
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(provider, stream)

    async with asyncio.timeout(600):
        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def main_async(args: argparse.Namespace, url: str) -> None:
    config = ProviderConfig(
        name="fake", kind="openai", base_url=url + "/v1", api_key="sk-x", locality="external"
    )
    provider = build_provider(config)
    stream = args.mode == "stream"
    try:
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            await run(provider, min(args.requests, 200), concurrency, stream)  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            await run(provider, args.requests, concurrency, stream)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{args.mode:6} c={concurrency:<4} calls={args.requests} "
                f"cpu={1e6 * cpu / args.requests:7.1f} us/call  {args.requests / wall:8.0f} calls/s"
            )
    finally:
        await provider.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--upstream", default=None, help="a running fake upstream's URL")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--mode", choices=["json", "stream"], default="json")
    args = parser.parse_args()
    proc = None
    url = args.upstream
    if url is None:
        proc, url = start_upstream(args.peers)
    try:
        uvloop.run(main_async(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()

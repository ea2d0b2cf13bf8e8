"""What the pipeline costs per request in instructions and bytecodes: numbers a busy machine
does not disturb.

On this shared VM two `ab.py` rounds a minute apart can differ by 50% in CPU per request, so a
change of a few percent is lost in the noise. This script runs `Gateway.chat_json` in process
(as `policy_overhead.py` does: an upstream that answers at once, no HTTP) for the bare tenant
and for a policy, and counts:

- instructions per request, with ``valgrind --tool=callgrind``: the run is made twice, with
  ``--requests`` and with three times as many, and the difference is divided, so start-up
  cancels out. The same build and inputs give the same count to within a fraction of a percent,
  whatever else the machine does. It counts work, not time: memory stalls do not show.
- ``--bytecodes``: Python bytecodes executed per request, per function (``sys.settrace`` with
  opcode events), the functions that execute most first: where the interpreter spends its
  steps.
- ``--http``: instructions per request of the whole server, ``switchboard serve`` under
  callgrind, with the HTTP parsing and writing, the upstream client against the peers kit's
  fake upstream, and the usage ledger (SQLite): what the in-process count leaves out. One
  client sends the requests one after the other on one connection (so the server's per-request
  share of waiting for the network is larger than under load, and the ratio smaller). Under
  valgrind, OpenSSL cannot use the CPU's SHA instructions: the response cache's SHA-256 counts
  about 8,000 instructions a request there, which the hardware does in a few hundred cycles.

Each request asks a new question (a response cache misses); ``--history N`` puts N earlier
turns of about 300 characters before it, as a chat client sends a conversation. Run by hand:

    python bench/instructions.py                               # bare and tenant-governed-cache
    python bench/instructions.py --policy bench/tenant-governed.json --history 10
    python bench/instructions.py --bytecodes
    python bench/instructions.py --http --requests 300           # the server, several minutes
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from policy_overhead import BODY, InstantProvider, NullRecorder, caller, limits
from run import ADMIN_KEY, admin_post, free_port, start_upstream, stop_all, wait_http

import switchboard
from switchboard.config import parse_config
from switchboard.gateway import Gateway, Router, build_catalog
from switchboard.metering import PriceTable

HERE = Path(__file__).parent
SENTENCE = (
    "The harbour master said the ships sail north at dawn when the wind turns, and the crews "
    "load grain, timber and wool for the markets across the sea. "
)
CONFIG = """
providers:
  - {name: instant, kind: openai, base_url: "http://127.0.0.1:9/v1", locality: external}
models:
  - name: fake-gpt
    deployments: [{provider: instant, model: gpt-4o-mini}]
"""


def _question(i: int) -> str:
    letters = chr(97 + i % 26) + chr(97 + i // 26 % 26) + chr(97 + i // 676 % 26)
    return f"Write two sentences about the sea, please, number {letters}."  # no digits


async def _run(policy: dict[str, Any], requests: int, history: int, trace: Any = None) -> None:
    config = parse_config(CONFIG, source="<bench>")
    catalog = await build_catalog(config, {"instant": InstantProvider()}, PriceTable())  # type: ignore[dict-item]
    gateway = Gateway(Router(catalog, config.router), NullRecorder(), limits=limits())  # type: ignore[arg-type]
    who = caller(policy)
    turns = _turns(history)

    async def one(i: int) -> None:
        # New string objects every time, as a request parsed from JSON has.
        messages = [BODY["messages"][0], *turns, _user(_question(i))]
        body = orjson.loads(orjson.dumps({**BODY, "messages": messages}))
        with gateway.metered(who, "chat.completions") as event:
            await gateway.chat_json(who, event, body)
        await asyncio.sleep(0)

    for i in range(200):  # warm up: caches, plans, compiled patterns
        await one(i)
    if trace is not None:
        sys.settrace(trace)
    for i in range(requests):
        await one(1_000 + i)
    sys.settrace(None)


def _turns(history: int) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}. " + SENTENCE * 2}
        for i in range(history)
    ]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _policy(path: str | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else {}


def _instructions(policy: str | None, requests: int, history: int) -> float:
    """Instructions per request: two runs under callgrind, the difference divided."""
    counts = []
    for n in (requests, 3 * requests):
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            str(n),
            "--history",
            str(history),
            "--policy",
            policy or "",  # "": the bare tenant
        ]
        # A fixed hash seed: string hashes, and so dict probing, the same in every run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=3600, check=True, env=env
        )
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise SystemExit(f"callgrind printed no count:\n{out.stderr[-2000:]}")
        counts.append(int(found[1]))
    return (counts[1] - counts[0]) / (2 * requests)


def _http_instructions(
    policy: str | None,
    requests: int,
    history: int,
    peers: Path,
    concurrency: int,
    profiles: Path | None = None,
) -> float:
    """Instructions per request of `switchboard serve` under callgrind: two servers, one
    answering ``requests`` and one three times as many, the difference divided."""
    work = Path(tempfile.mkdtemp(prefix="sb-instructions-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream, upstream_url = start_upstream(peers)
        procs.append(upstream)
        config = work / "switchboard.yaml"
        config.write_text((HERE / "gateway.yaml").read_text().replace("UPSTREAM_URL", upstream_url))
        counts = [
            _serve_counted(
                work / f"run{n}",
                config,
                policy,
                n,
                history,
                concurrency,
                profiles / f"callgrind.{Path(policy).stem if policy else 'bare'}.{n}"
                if profiles
                else None,
            )
            for n in (requests, 3 * requests)
        ]
        return (counts[1] - counts[0]) / (2 * requests)
    finally:
        stop_all(procs)


def _serve_counted(
    work: Path,
    config: Path,
    policy: str | None,
    requests: int,
    history: int,
    concurrency: int,
    profile: Path | None = None,
) -> int:
    """One server under callgrind, 100 requests to warm it up and ``requests`` more, over
    ``concurrency`` connections at once."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        # The gateway this script imported (the same build as the in-process count).
        "PYTHONPATH": str(Path(switchboard.__file__).resolve().parents[1]),
        "SWITCHBOARD_DATA_DIR": str(work),
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SWITCHBOARD_LOG_LEVEL": "warning",
        # Work done per second, not per request, would be counted some fifty times over
        # under valgrind, and by how fast it ran: the usage ledger is written at the end, in
        # batches of 500 (as a busy server writes it), and the API key is looked up once.
        "SWITCHBOARD_USAGE_FLUSH_INTERVAL_SECONDS": "3600",
        "SWITCHBOARD_KEY_CACHE_TTL_SECONDS": "3600",
    }
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile or '/dev/null'}"]
    command += os.environ.get("SB_CALLGRIND_OPTIONS", "").split()
    command.append(sys.executable)
    command += ["-m", "switchboard", "serve", "--config", str(config), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", seconds=600)  # start-up under valgrind is slow
        admin_post(url, "/admin/v1/tenants", {"slug": "counted", "usage_mode": "hybrid"})
        key = str(admin_post(url, "/admin/v1/tenants/counted/keys", {})["key"])
        if policy:
            admin_post(url, "/admin/v1/tenants/counted/config", _policy(policy), method="PUT")
        _send(port, key, range(100), history, 1)
        _send(port, key, range(100, 100 + requests), history, concurrency)
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=600)
    finally:
        if server.poll() is None:
            server.kill()
    found = re.search(rb"Collected : (\d+)", err)
    if found is None:
        raise SystemExit(f"callgrind printed no count:\n{err[-2000:].decode(errors='replace')}")
    return int(found[1])


def _send(port: int, key: str, numbers: range, history: int, concurrency: int) -> None:
    """Ask the questions ``numbers`` over ``concurrency`` connections at once (threads of
    this process, which valgrind does not count)."""
    turns = _turns(history)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    todo = iter(numbers)
    lock = threading.Lock()
    failures: list[str] = []  # a thread's exception would not stop the script: say it here

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            while not failures:
                with lock:
                    i = next(todo, None)
                if i is None:
                    break
                messages = [BODY["messages"][0], *turns, _user(_question(i))]
                body = orjson.dumps({**BODY, "messages": messages})
                connection.request("POST", "/v1/chat/completions", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"the server answered {response.status}")
        except OSError as exc:
            failures.append(f"request failed: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(failures[0])


def _bytecodes(policy: str | None, requests: int, history: int) -> None:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[(Path(code.co_filename).name, code.co_name)] += 1
        return trace

    asyncio.run(_run(_policy(policy), requests, history, trace))
    total = sum(counts.values()) / requests
    print(f"{policy or 'bare'}: {total:,.0f} bytecodes a request")
    for (file, name), count in counts.most_common(25):
        print(f"  {count / requests:7.1f}  {file}:{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(HERE / "tenant-governed-cache.json"))
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--bytecodes", action="store_true")
    parser.add_argument("--http", action="store_true", help="count the whole server")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="with --http: requests in flight at once (the server slowed down by valgrind then "
        "has all of them waiting: the most batching it can do)",
    )
    parser.add_argument(
        "--profiles",
        type=Path,
        default=None,
        help="with --http: keep callgrind's profiles here (callgrind.<policy>.<requests>), "
        "for callgrind_annotate",
    )
    parser.add_argument("--peers", type=Path, default=HERE.parent.parent / "shared" / "peers")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # one run, under valgrind
        asyncio.run(_run(_policy(args.policy), args.child, args.history))
        return
    if args.bytecodes:
        for policy in (None, args.policy):
            _bytecodes(policy, min(args.requests, 300), args.history)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install -y valgrind")
    if args.http:
        if args.profiles:
            args.profiles.mkdir(parents=True, exist_ok=True)
        bare = _http_instructions(
            None, args.requests, args.history, args.peers, args.concurrency, args.profiles
        )
        governed = _http_instructions(
            args.policy, args.requests, args.history, args.peers, args.concurrency, args.profiles
        )
    else:
        bare = _instructions(None, args.requests, args.history)
        governed = _instructions(args.policy, args.requests, args.history)
    where = f"the server, over HTTP, c={args.concurrency}" if args.http else "in process"
    runs = f"{args.requests} and {3 * args.requests} requests"
    print(f"{where}, history {args.history} turns, {runs}")
    print(f"bare      {bare:10,.0f} instructions a request")
    print(f"governed  {governed:10,.0f} instructions a request ({Path(args.policy).name})")
    print(f"policy steps +{governed - bare:,.0f} ({governed / bare:.2f}x the bare pipeline)")


if __name__ == "__main__":
    main()

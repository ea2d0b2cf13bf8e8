"""Benchmark: the gateway against a direct call to the same fake upstream, on loopback.

Starts the fake OpenAI upstream from the shared peers kit, starts `switchboard serve` (auth and
metering on, SQLite by default), creates a tenant and key, then runs the peers kit's load matrix
against the upstream directly and through the gateway, and prints markdown tables: requests/s,
latency p50/p99 at each concurrency, time to first chunk for streams, gateway CPU ms per
request, and the gateway's peak RSS. Only 127.0.0.1 is ever a target; every run is bounded.

    python bench/run.py                               # c=1,32,128, json and stream
    python bench/run.py --requests 1000 --concurrency 32 --modes json
    python bench/run.py --database-url postgresql+asyncpg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "sk-sb-admin-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {seconds} s")


def start_upstream(peers: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The peers kit's fake OpenAI upstream on a free loopback port, answering at once (20
    content chunks a stream): its process and its URL."""
    if not (peers / "fake_upstream.py").exists():
        raise SystemExit(f"the peers kit is not at {peers}: pass --peers")
    port = free_port()
    env = {**os.environ, "FAKE_STREAM_TOKENS": "20", "FAKE_DELAY_MS": "0"}
    command = [sys.executable, str(peers / "fake_upstream.py"), "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health")
    except BaseException:
        proc.terminate()
        raise
    return proc, url


def admin_post(
    base: str, path: str, body: dict[str, object], method: str = "POST"
) -> dict[str, object]:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def matrix(peers: Path, args: argparse.Namespace, out: Path, **target: str) -> None:
    command = [
        sys.executable,
        str(peers / "bench_matrix.py"),
        "--concurrency", args.concurrency,
        "--modes", args.modes,
        "--requests", str(args.requests),
        "--warmup", str(args.warmup),
        "--max-time", "240",
        "--out", str(out),
    ]  # fmt: skip
    for name, value in target.items():
        command += [f"--{name.replace('_', '-')}", value]
    subprocess.run(command, check=True, timeout=1800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", default="1,32,128")
    parser.add_argument("--modes", default="json,stream")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--config", type=Path, default=None, help="gateway YAML (UPSTREAM_URL is expanded)"
    )
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument(
        "--tenant-config",
        type=Path,
        default=None,
        help="JSON policy document PUT for the bench tenant (limits, guardrails, cache)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S")
    )
    args = parser.parse_args()
    peers: Path = args.peers
    if not (peers / "bench_matrix.py").exists():
        raise SystemExit(f"peers kit not found at {peers}: pass --peers")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    work = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    gw_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream, upstream_url = start_upstream(peers)
        procs.append(upstream)
        config = work / "switchboard.yaml"
        template = (
            args.config.read_text()
            if args.config
            else (ROOT / "bench" / "gateway.yaml").read_text()
        )
        config.write_text(template.replace("UPSTREAM_URL", upstream_url))
        gw_env = {
            **os.environ,
            "SWITCHBOARD_DATA_DIR": str(work / "data"),
            "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
            "SWITCHBOARD_LOG_LEVEL": "warning",
        }
        if args.database_url:
            gw_env["SWITCHBOARD_DATABASE_URL"] = args.database_url
        gateway = subprocess.Popen(
            [
                sys.executable, "-m", "switchboard", "serve", "--config", str(config),
                "--port", str(gw_port), "--workers", str(args.workers),
            ],
            env=gw_env,
        )  # fmt: skip
        procs.append(gateway)
        gateway_url = f"http://127.0.0.1:{gw_port}"
        wait_http(gateway_url + "/readyz")
        slug = f"bench-{int(time.time())}"
        admin_post(gateway_url, "/admin/v1/tenants", {"slug": slug, "usage_mode": "hybrid"})
        key = str(admin_post(gateway_url, f"/admin/v1/tenants/{slug}/keys", {})["key"])
        if args.tenant_config:
            policy = json.loads(args.tenant_config.read_text())
            admin_post(gateway_url, f"/admin/v1/tenants/{slug}/config", policy, method="PUT")
        memory = work / "mem.json"
        monitor = subprocess.Popen(
            [sys.executable, str(peers / "procmon.py"), "watch", str(gateway.pid), str(memory)]
        )
        procs.append(monitor)
        if not args.skip_direct:
            matrix(peers, args, results, label="direct", url=upstream_url,
                   pid=str(upstream.pid), upstream_pid=str(upstream.pid))  # fmt: skip
        matrix(peers, args, results, label="switchboard", url=gateway_url, key=key,
               model="fake-gpt", pid=str(gateway.pid), upstream_pid=str(upstream.pid))  # fmt: skip
        monitor.terminate()
        monitor.wait(timeout=10)
        subprocess.run([sys.executable, str(peers / "summarize.py"), str(args.out)], check=True)
        if memory.exists():
            print(f"\ngateway peak RSS: {memory.read_text().strip()}")
        print(f"\nresults: {args.out}")
    finally:
        stop_all(procs)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the processes a benchmark started, newest first; kill what will not stop."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

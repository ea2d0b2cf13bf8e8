"""A/B: two gateways side by side on one fake upstream, measured in alternating rounds.

On a small shared machine, two runs of `run.py` minutes apart differ by 10-30% in CPU per
request: the host, not the code. This script takes the drift out of a comparison. It starts
one fake upstream and two `switchboard serve` processes, A and B, each with its own source
tree (``--root-a``/``--root-b``, for before/after a change) and tenant policy
(``--policy-a``/``--policy-b``, e.g. the bare tenant against `tenant-governed.json`), then runs
``wrk`` (POST /v1/chat/completions, the peers kit's script) against A, B, A, B, ... and prints,
per side, the median and every round of requests/s and gateway CPU ms per request (all of the
gateway's threads, from the scheduler's own accounting in /proc/<pid>/task/*/schedstat).
Only 127.0.0.1 is a target; every round is bounded by its request count and wrk's -d.

    python bench/ab.py --policy-b bench/tenant-governed.json            # policy overhead
    python bench/ab.py --root-a /path/to/old/checkout                   # before/after
    python bench/ab.py --concurrency 1 --requests 4000 --rounds 6
    python bench/ab.py --policy-b bench/tenant-governed-cache.json --unique-prompts   # cache misses
    python bench/ab.py --policy-b bench/tenant-governed-cache.json --unique-prompts --prompt-numbers
    python bench/ab.py --policy-b bench/tenant-governed-cache.json --unique-prompts --history 10
    python bench/ab.py --pin ...          # the gateways on a core of their own
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import ADMIN_KEY, ROOT, admin_post, free_port, start_upstream, stop_all, wait_http


def gateway_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid`` (threads that exited are not counted)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def gateway_user_system_ticks(pid: int) -> tuple[int, int]:
    """User and system CPU of ``pid`` (all its threads), in clock ticks (``SC_CLK_TCK``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


def wrk_round(wrk_script: Path, url: str, key: str, args: argparse.Namespace) -> tuple[float, int]:
    """One round: (requests/s, requests answered)."""
    if args.unique_prompts:
        return _wrk_for_seconds(url, key, args)
    env = {
        **os.environ,
        "WRK_KEY": key,
        "WRK_REQUESTS": str(args.requests),
        "WRK_THREADS": "1",
    }
    command = ["wrk", "-t1", f"-c{args.concurrency}", "-d120s", "--timeout", "10s"]
    out = subprocess.run(
        [*command, "-s", str(wrk_script), url],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1]), args.requests
    raise SystemExit(f"wrk printed no Requests/sec:\n{out}")


def _prompt_seed() -> str:
    """Where a run's prompt numbers start: 100,000 apart per millisecond, so no run repeats an
    earlier one's prompts, and under 10^14, which wrk's Lua prints exactly."""
    return str(time.time_ns() // 1_000_000 % 10**8 * 100_000)


def _wrk_for_seconds(url: str, key: str, args: argparse.Namespace) -> tuple[float, int]:
    """A fixed-time round with a new prompt on every request (bench/wrk_unique.lua)."""
    script = ROOT / "bench" / "wrk_unique.lua"
    command = ["wrk", "-t1", f"-c{args.concurrency}", f"-d{args.seconds}s", "--timeout", "10s"]
    out = subprocess.run(
        [*command, "-s", str(script), url],
        env={
            **os.environ,
            "WRK_KEY": key,
            "WRK_SEED": _prompt_seed(),
            "WRK_NUMBERS": "1" if args.prompt_numbers else "0",
            "WRK_HISTORY": str(args.history),
        },
        capture_output=True,
        text=True,
        timeout=args.seconds + 60,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"some requests failed:\n{out}")
    done = next(int(line.split()[0]) for line in out.splitlines() if " requests in " in line)
    rps = next(
        float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec:")
    )
    return rps, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--root-a", type=Path, default=ROOT)
    parser.add_argument("--root-b", type=Path, default=ROOT)
    parser.add_argument("--policy-a", type=Path, default=None)
    parser.add_argument("--policy-b", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "gateway.yaml")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--unique-prompts",
        action="store_true",
        help="a new prompt on every request (response-cache misses); rounds of --seconds",
    )
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument(
        "--prompt-numbers",
        action="store_true",
        help="with --unique-prompts: a date and an amount in every prompt (no PII in them)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="with --unique-prompts: this many earlier turns (about 300 characters each) "
        "before every new question, as a chat client sends the conversation",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the gateways on the last CPU, the upstream and wrk on the others: the gateways "
        "do not share a core's caches with the load (less noise on a small machine)",
    )
    for side in ("a", "b"):
        parser.add_argument(
            f"--env-{side}",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for gateway {side.upper()} only (repeatable), "
            "e.g. SWITCHBOARD_CACHE_MAX_ENTRIES=100",
        )
    args = parser.parse_args()
    for item in [*args.env_a, *args.env_b]:
        if "=" not in item:
            parser.error(f"--env-a/--env-b take NAME=VALUE, not {item!r}")
    gateway_cpu: int | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least two CPUs")
        gateway_cpu = cpus[-1]
        os.sched_setaffinity(0, set(cpus[:-1]))  # this script, and so the upstream and wrk
    if args.history and not args.unique_prompts:
        parser.error("--history needs --unique-prompts")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    wrk_script = args.peers / "wrk_chat.lua"
    if not wrk_script.exists():
        raise SystemExit(f"peers kit not found at {args.peers}: pass --peers")
    work = Path(tempfile.mkdtemp(prefix="sb-ab-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream, upstream_url = start_upstream(args.peers)
        procs.append(upstream)
        config = work / "switchboard.yaml"
        config.write_text(args.config.read_text().replace("UPSTREAM_URL", upstream_url))
        specs = (("A", args.root_a, args.policy_a), ("B", args.root_b, args.policy_b))
        extra_env = {"A": args.env_a, "B": args.env_b}
        sides: dict[str, tuple[int, str, str]] = {}
        for name, root, policy in specs:
            port = free_port()
            env = {
                **os.environ,
                "PYTHONPATH": str(root.resolve() / "src"),
                "SWITCHBOARD_DATA_DIR": str(work / f"data-{name}"),
                "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
                "SWITCHBOARD_LOG_LEVEL": "warning",
                **dict(item.split("=", 1) for item in extra_env[name]),
            }
            command = [sys.executable, "-m", "switchboard", "serve", "--config", str(config)]
            if gateway_cpu is not None:
                command = ["taskset", "-c", str(gateway_cpu), *command]
            proc = subprocess.Popen([*command, "--port", str(port)], env=env)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/readyz")
            slug = f"ab-{name.lower()}-{int(time.time())}"
            admin_post(url, "/admin/v1/tenants", {"slug": slug, "usage_mode": "hybrid"})
            key = str(admin_post(url, f"/admin/v1/tenants/{slug}/keys", {})["key"])
            if policy is not None:
                body = json.loads(policy.read_text())
                admin_post(url, f"/admin/v1/tenants/{slug}/config", body, method="PUT")
            sides[name] = (proc.pid, url, key)
        results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        split: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}  # user, system ms
        for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
            for name, (pid, url, key) in sides.items():
                before = gateway_cpu_ns(pid)
                user, system = gateway_user_system_ticks(pid)
                rps, answered = wrk_round(wrk_script, url, key, args)
                cpu_ms = (gateway_cpu_ns(pid) - before) / 1e6 / answered
                user_after, system_after = gateway_user_system_ticks(pid)
                if round_:
                    results[name].append((rps, cpu_ms))
                    tick_ms = 1000 / os.sysconf("SC_CLK_TCK") / answered
                    split[name].append(
                        ((user_after - user) * tick_ms, (system_after - system) * tick_ms)
                    )
        for name, root, policy in specs:
            rows = results[name]
            rps = statistics.median(r for r, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(
                f"{name}: {root} policy={policy.name if policy else 'none'} c={args.concurrency}: "
                f"median {rps:,.0f} req/s, {cpu:.3f} ms CPU/request; rounds: "
                + ", ".join(f"{c:.3f}" for _, c in rows)
            )
            user_ms = statistics.median(u for u, _ in split[name])
            system_ms = statistics.median(s for _, s in split[name])
            print(f"   user {user_ms:.3f} ms, system {system_ms:.3f} ms a request (medians)")
        a = statistics.median(c for _, c in results["A"])
        b = statistics.median(c for _, c in results["B"])
        # Each B round ran right after its A round: their ratio cancels the host's slow drift.
        paired = [rb[1] / ra[1] for ra, rb in zip(results["A"], results["B"], strict=True)]
        rounds = ", ".join(f"{r:.2f}" for r in paired)
        print(f"B/A CPU per request: {b / a:.2f} (medians); paired rounds: {rounds}; ", end="")
        print(f"their median {statistics.median(paired):.2f}")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()

"""The `switchboard` command, in process (CliRunner) and, where stdout/stderr matter, as a real
subprocess. State lives under tmp_path; PostgreSQL is exercised once."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import Result

from conftest import Run
from fakes.server import ServerThread
from switchboard.metering.usage import UsageEvent
from switchboard.store import Database, KeyRepository, TenantRepository, UsageRepository

SECRET = re.compile(r"sk-sb-[A-Za-z0-9_-]{43}")


def _clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_DATA_DIR"] = str(data_dir)
    return env


def run_subprocess(
    args: Sequence[str], data_dir: Path, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        env={**_clean_env(data_dir), **(env or {})},
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'switchboard.db'}"


def in_db(url: str, fn: Callable[[Database], Any]) -> Any:
    async def go() -> Any:
        db = Database(url)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


# -- tenants ------------------------------------------------------------------------------------


def test_tenant_create_and_list(cli: Run) -> None:
    created = ok(cli("tenant", "create", "acme", "--name", "Acme Inc", "--usage-mode", "local"))
    assert created.stdout == ""
    assert "created tenant acme" in created.stderr
    assert "usage mode local" in created.stderr
    ok(cli("tenant", "create", "beta"))

    listed = orjson.loads(ok(cli("tenant", "list", "--json")).stdout)
    assert [t["slug"] for t in listed] == ["acme", "beta"]
    acme, beta = listed
    assert acme["name"] == "Acme Inc"
    assert acme["usage_mode"] == "local"
    assert acme["id"].startswith("ten_")
    assert datetime.fromisoformat(acme["created_at"]).tzinfo is not None
    assert beta["usage_mode"] == "hybrid"  # the default
    assert beta["name"] == "beta"

    table = ok(cli("tenant", "list")).stdout.splitlines()
    assert len(table) == 2
    assert table[0].split()[:3] == ["acme", acme["id"], "local"]
    assert table[0].endswith("Acme Inc")
    assert table[1].split()[:3] == ["beta", beta["id"], "hybrid"]


def test_tenant_update_usage_mode(cli: Run) -> None:
    ok(cli("tenant", "create", "acme", "--usage-mode", "hybrid"))

    updated = ok(cli("tenant", "update", "acme", "--usage-mode", "external"))
    assert "usage mode external" in updated.stderr

    (tenant,) = orjson.loads(ok(cli("tenant", "list", "--json")).stdout)
    assert tenant["usage_mode"] == "external"

    bad = cli("tenant", "update", "acme", "--usage-mode", "cloud")
    assert bad.exit_code == 1
    assert "error: usage_mode must be one of local, external, hybrid" in bad.stderr
    (tenant,) = orjson.loads(ok(cli("tenant", "list", "--json")).stdout)
    assert tenant["usage_mode"] == "external"

    missing = cli("tenant", "update", "ghost", "--usage-mode", "local")
    assert missing.exit_code == 1
    assert "error: no tenant 'ghost'" in missing.stderr


def test_tenant_create_errors(cli: Run) -> None:
    ok(cli("tenant", "create", "acme"))
    duplicate = cli("tenant", "create", "acme")
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.stderr
    bad = cli("tenant", "create", "Not_A_Slug")
    assert bad.exit_code == 1
    assert "error: tenant slug" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout


# -- keys ---------------------------------------------------------------------------------------


def test_key_create_prints_only_the_key_on_stdout(cli: Run, data_dir: Path) -> None:
    ok(cli("tenant", "create", "acme", "--usage-mode", "local"))

    proc = run_subprocess(["key", "create", "--tenant", "acme", "--name", "ci"], data_dir)

    assert proc.returncode == 0, proc.stderr
    assert SECRET.fullmatch(proc.stdout.removesuffix("\n"))
    assert proc.stdout.count("\n") == 1
    assert proc.stdout.endswith("\n")
    secret = proc.stdout[:-1]
    assert "created key key_" in proc.stderr
    assert "for tenant acme" in proc.stderr
    assert "shown once" in proc.stderr
    assert secret not in proc.stderr

    async def find(db: Database) -> Any:
        return await KeyRepository(db).find_by_secret(secret)

    found = in_db(sqlite_url(data_dir), find)
    assert found is not None
    key, tenant = found
    assert tenant.slug == "acme"
    assert key.name == "ci"
    assert key.id in proc.stderr


def test_key_list_and_revoke_never_print_the_secret(cli: Run) -> None:
    ok(cli("tenant", "create", "acme"))
    ok(cli("tenant", "create", "other"))
    first = ok(cli("key", "create", "--tenant", "acme", "--name", "first")).stdout.strip()
    second = ok(cli("key", "create", "--tenant", "acme")).stdout.strip()
    ok(cli("key", "create", "--tenant", "other"))
    assert SECRET.fullmatch(first)
    assert SECRET.fullmatch(second)

    listing = ok(cli("key", "list", "--tenant", "acme", "--json"))
    keys = orjson.loads(listing.stdout)
    assert [k["name"] for k in keys] == ["first", "default"]
    assert all(k["revoked_at"] is None and k["expires_at"] is None for k in keys)
    assert keys[0]["prefix"] == first[:10]
    table = ok(cli("key", "list", "--tenant", "acme"))
    for output in (listing.stdout + listing.stderr, table.stdout + table.stderr):
        assert first not in output
        assert second not in output
        assert first[10:20] not in output
        assert "secret_hash" not in output
    lines = table.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(keys[0]["id"])
    assert "active" in lines[0]
    assert "expires never" in lines[0]

    revoked = ok(cli("key", "revoke", keys[0]["id"]))
    assert f"revoked {keys[0]['id']}" in revoked.stderr

    after = orjson.loads(ok(cli("key", "list", "--tenant", "acme", "--json")).stdout)
    assert after[0]["revoked_at"] is not None
    assert after[1]["revoked_at"] is None
    assert "revoked" in ok(cli("key", "list", "--tenant", "acme")).stdout.splitlines()[0]

    missing = cli("key", "revoke", "key_doesnotexist")
    assert missing.exit_code == 1
    assert "error: no API key 'key_doesnotexist'" in missing.stderr


def test_key_expires_in(cli: Run) -> None:
    ok(cli("tenant", "create", "acme"))
    before = datetime.now(UTC)
    ok(cli("key", "create", "--tenant", "acme", "--expires-in", "7"))
    ok(cli("key", "create", "--tenant", "acme", "--expires-in", "0.5"))

    keys = orjson.loads(ok(cli("key", "list", "--tenant", "acme", "--json")).stdout)
    week = datetime.fromisoformat(keys[0]["expires_at"])
    half_day = datetime.fromisoformat(keys[1]["expires_at"])
    assert abs(week - (before + timedelta(days=7))) < timedelta(minutes=1)
    assert abs(half_day - (before + timedelta(hours=12))) < timedelta(minutes=1)

    for bad in ("0", "-3"):
        refused = cli("key", "create", "--tenant", "acme", "--expires-in", bad)
        assert refused.exit_code == 1
        assert "--expires-in must be a positive number" in refused.stderr
        assert refused.stdout == ""
    assert len(orjson.loads(ok(cli("key", "list", "--tenant", "acme", "--json")).stdout)) == 2


def test_key_create_for_unknown_tenant(cli: Run) -> None:
    result = cli("key", "create", "--tenant", "ghost")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: no tenant 'ghost'" in result.stderr


def test_tenant_and_key_cli_on_postgresql(cli: Run, pg_url: str) -> None:
    env = {"SWITCHBOARD_DATABASE_URL": pg_url}
    slug = f"pg-{secrets.token_hex(4)}"

    ok(cli("tenant", "create", slug, "--usage-mode", "external", env=env))
    ok(cli("tenant", "update", slug, "--usage-mode", "local", env=env))
    tenants = orjson.loads(ok(cli("tenant", "list", "--json", env=env)).stdout)
    (mine,) = [t for t in tenants if t["slug"] == slug]
    assert mine["usage_mode"] == "local"

    secret = ok(cli("key", "create", "--tenant", slug, "--expires-in", "1", env=env)).stdout
    assert SECRET.fullmatch(secret.removesuffix("\n"))
    (key,) = orjson.loads(ok(cli("key", "list", "--tenant", slug, "--json", env=env)).stdout)
    assert key["expires_at"] is not None
    ok(cli("key", "revoke", key["id"], env=env))
    (key,) = orjson.loads(ok(cli("key", "list", "--tenant", slug, "--json", env=env)).stdout)
    assert key["revoked_at"] is not None

    async def find(db: Database) -> Any:
        return await KeyRepository(db).find_by_secret(secret.strip())

    found = in_db(pg_url, find)
    assert found is not None
    assert found[1].slug == slug
    assert found[0].revoked_at is not None


# -- usage --------------------------------------------------------------------------------------


T0 = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def usage_rows(cli: Run, data_dir: Path) -> list[UsageEvent]:
    ok(cli("tenant", "create", "acme"))
    ok(cli("tenant", "create", "other"))

    async def insert(db: Database) -> list[UsageEvent]:
        tenants = TenantRepository(db)
        acme, other = await tenants.get("acme"), await tenants.get("other")
        events = [
            UsageEvent(
                request_id=f"req_acme_{i}",
                tenant_id=acme.id,
                key_id="key_abc",
                created_at=T0 + timedelta(days=i),
                endpoint="chat",
                model="gpt-fake",
                provider="openai-fake",
                upstream_model="gpt-4o-mini",
                tokens_input=100 * (i + 1),
                tokens_output=10 * (i + 1),
                cost_usd=0.000123 * (i + 1),
                latency_ms=50 + i,
                status=200 if i < 2 else 502,
                error=None if i < 2 else 'upstream, said "no"',
            )
            for i in range(3)
        ]
        events.append(
            UsageEvent(
                request_id="req_other_0",
                tenant_id=other.id,
                key_id=None,
                created_at=T0,
                endpoint="chat",
                model="secret-model",
            )
        )
        await UsageRepository(db).write(events)
        return events[:3]

    result: list[UsageEvent] = in_db(sqlite_url(data_dir), insert)
    return result


def test_usage_json(cli: Run, usage_rows: list[UsageEvent]) -> None:
    rows = orjson.loads(ok(cli("usage", "--tenant", "acme", "--format", "json")).stdout)
    assert [r["request_id"] for r in rows] == ["req_acme_2", "req_acme_1", "req_acme_0"]
    newest = rows[0]
    assert datetime.fromisoformat(newest["created_at"]) == T0 + timedelta(days=2)
    assert newest["model"] == "gpt-fake"
    assert newest["provider"] == "openai-fake"
    assert newest["tokens_input"] == 300
    assert newest["tokens_output"] == 30
    assert float(newest["cost_usd"]) == pytest.approx(0.000369)
    assert newest["status"] == 502
    assert newest["error"] == 'upstream, said "no"'
    assert rows[2]["error"] is None


def test_usage_csv(cli: Run, usage_rows: list[UsageEvent]) -> None:
    out = ok(cli("usage", "--tenant", "acme", "--format", "csv")).stdout
    records = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in records] == ["req_acme_2", "req_acme_1", "req_acme_0"]
    assert records[0]["error"] == 'upstream, said "no"'  # quoted, not split
    assert records[2]["error"] == ""
    assert records[2]["tokens_input"] == "100"
    assert float(records[2]["cost_usd"]) == pytest.approx(0.000123)
    assert "req_other_0" not in out


def test_usage_table_and_since(cli: Run, usage_rows: list[UsageEvent]) -> None:
    table = ok(cli("usage", "--tenant", "acme")).stdout.splitlines()
    assert table[0].split()[:4] == ["request_id", "created_at", "model", "provider"]
    assert [line.split()[0] for line in table[1:]] == ["req_acme_2", "req_acme_1", "req_acme_0"]
    assert "secret-model" not in "\n".join(table)

    since = (T0 + timedelta(days=1)).date().isoformat()
    recent = orjson.loads(
        ok(cli("usage", "--tenant", "acme", "--format", "json", "--since", since)).stdout
    )
    assert [r["request_id"] for r in recent] == ["req_acme_2", "req_acme_1"]

    limited = orjson.loads(
        ok(cli("usage", "--tenant", "acme", "--format", "json", "--limit", "1")).stdout
    )
    assert [r["request_id"] for r in limited] == ["req_acme_2"]


def test_usage_since_with_a_utc_offset(cli: Run, usage_rows: list[UsageEvent]) -> None:
    # 11:30+02:00 on day 1 is exactly req_acme_1's time (09:30 UTC): it and req_acme_2 match.
    since = (T0 + timedelta(days=1)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert since.endswith("+02:00")
    rows = orjson.loads(
        ok(cli("usage", "--tenant", "acme", "--format", "json", "--since", since)).stdout
    )
    assert [r["request_id"] for r in rows] == ["req_acme_2", "req_acme_1"]


def test_usage_errors(cli: Run, usage_rows: list[UsageEvent]) -> None:
    bad_format = cli("usage", "--tenant", "acme", "--format", "xml")
    assert bad_format.exit_code == 1
    assert "--format must be one of table, json, csv" in bad_format.stderr
    bad_since = cli("usage", "--tenant", "acme", "--since", "last tuesday")
    assert bad_since.exit_code == 1
    assert "not a date or time" in bad_since.stderr
    unknown = cli("usage", "--tenant", "ghost")
    assert unknown.exit_code == 1
    assert "no tenant 'ghost'" in unknown.stderr


# -- doctor -------------------------------------------------------------------------------------


def write_config(path: Path, openai_url: str, ollama_url: str) -> Path:
    path.write_text(
        f"""\
providers:
  - name: openai-fake
    kind: openai
    base_url: {openai_url}/v1
    api_key: sk-upstream-secret
    locality: external
  - name: ollama-fake
    kind: ollama
    base_url: {ollama_url}
    locality: local
models:
  - name: gpt-fake
    deployments: [{{provider: openai-fake, model: gpt-4o-mini}}]
  - name: llama
    deployments: [{{provider: ollama-fake, model: "llama3.2:latest"}}]
"""
    )
    return path


def test_doctor_all_ok(
    cli: Run, tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    config = write_config(tmp_path / "gw.yaml", fake_openai.url, fake_ollama.url)
    ok(cli("migrate"))

    result = ok(cli("doctor", "--config", str(config), env={"SWITCHBOARD_CONFIG": str(config)}))

    lines = result.stdout.splitlines()
    assert lines == [line for line in lines if line.startswith("[ok  ] ")], result.stdout
    text = result.stdout
    assert f"config: {config}: 2 providers, 2 models" in text
    assert "database: sqlite+aiosqlite:///" in text
    assert "reachable, schema current" in text
    assert "shared state: limits and budgets are counted in the one worker" in text
    assert f"provider openai-fake: {fake_openai.url}/v1: reachable, 3 models listed" in text
    assert f"provider ollama-fake: {fake_ollama.url}: reachable" in text
    assert "sk-upstream-secret" not in text + result.stderr


def test_doctor_warns_but_passes(
    cli: Run, tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    config = write_config(tmp_path / "gw.yaml", fake_openai.url, fake_ollama.url)
    config.write_text(
        config.read_text()
        + """\
  - name: unpulled
    deployments: [{provider: ollama-fake, model: "mistral:7b"}]
  - name: unpriced
    deployments: [{provider: openai-fake, model: gpt-4o-mini-private}]
"""
    )
    # no `migrate`: the fresh database's schema is behind

    result = ok(cli("doctor", env={"SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_WORKERS": "3"}))

    text = result.stdout
    assert "[WARN] shared state: 3 workers count rate limits" in text
    assert "fix: set SWITCHBOARD_LIMITS_URL to a Redis" in text
    assert "[WARN] database:" in text
    assert "fix: run `switchboard migrate`" in text
    assert "[WARN] model unpulled: ollama-fake does not list 'mistral:7b'" in text
    assert "fix: pull or deploy that model upstream" in text
    assert "[WARN] model gpt-fake" not in text  # listed upstream
    assert "[WARN] model llama" not in text
    assert "[WARN] model unpriced: no price known for 'gpt-4o-mini-private'" in text
    assert "[FAIL]" not in text


def test_doctor_dead_provider_fails(cli: Run, tmp_path: Path, fake_ollama: ServerThread) -> None:
    config = write_config(tmp_path / "gw.yaml", "http://127.0.0.1:9", fake_ollama.url)
    ok(cli("migrate"))

    start = time.monotonic()
    result = cli("doctor", env={"SWITCHBOARD_CONFIG": str(config)})

    assert time.monotonic() - start < 10
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    (failed,) = [i for i, line in enumerate(lines) if line.startswith("[FAIL]")]
    assert lines[failed].startswith("[FAIL] provider openai-fake: http://127.0.0.1:9/v1: ")
    assert lines[failed + 1].strip().startswith("fix: start the openai server at")
    assert any(line.startswith("[ok  ] provider ollama-fake") for line in lines)


def test_doctor_bad_config_fails(cli: Run, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("providers:\n  - name: x\n    kind: foo\n")
    result = cli("doctor", env={"SWITCHBOARD_CONFIG": str(config)})
    assert result.exit_code == 1
    assert "[FAIL] config:" in result.stdout
    assert "line 3: providers.0.kind" in result.stdout


# -- serve --------------------------------------------------------------------------------------


def test_serve_with_a_bad_config_exits_before_listening(tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """\
providers:
  - name: ok
    kind: ollama
    base_url: http://127.0.0.1:11434
    locality: cloud
"""
    )

    start = time.monotonic()
    proc = run_subprocess(["serve", "--config", str(bad), "--port", "1"], data_dir)

    assert time.monotonic() - start < 30
    assert proc.returncode == 2, proc.stderr
    assert "line 5: providers.0.locality" in proc.stderr
    assert str(bad) in proc.stderr
    assert "listening" not in proc.stderr + proc.stdout
    assert not (data_dir / "switchboard.db").exists()  # stopped before touching the database


def test_serve_warns_when_workers_would_split_the_limits(data_dir: Path) -> None:
    with socket.socket() as taken:  # the port is taken, so serve stops after the warning
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_subprocess(["serve", "--workers", "2", "--port", str(port)], data_dir)
    assert proc.returncode != 0
    assert "warning: 2 workers count rate limits" in proc.stderr
    assert "SWITCHBOARD_LIMITS_URL" in proc.stderr


def test_doctor_finds_limits_counted_per_worker() -> None:
    from switchboard.doctor import shared_state
    from switchboard.settings import Settings

    assert shared_state(Settings(workers=1)).level == "ok"
    assert shared_state(Settings(workers=4, limits_url="redis://127.0.0.1:6379/0")).level == "ok"
    finding = shared_state(Settings(workers=4))
    assert finding.level == "warn"
    assert "up to 4 times its limits" in finding.detail

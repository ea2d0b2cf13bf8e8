"""`switchboard department`, `switchboard user`, `key create --user` and `switchboard audit`."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import orjson

from conftest import Run
from switchboard.auth.passwords import verify_password
from switchboard.platform import Platform
from switchboard.store import Database
from test_cli import in_db, ok, sqlite_url

PASSWORD = "a long enough passphrase"


def stored_hash(url: str, tenant: str | None, email: str) -> str | None:
    async def find(db: Database) -> Any:
        p = Platform(db)
        tenant_id = (await p.tenants.get(tenant)).id if tenant else None
        found = await p.users.credentials(tenant_id, email)
        assert found is not None
        return found[1]

    result: str | None = in_db(url, find)
    return result


def check(url: str, stored: str | None, password: str) -> bool:
    async def run(_: Database) -> bool:
        return await verify_password(stored, password)

    result: bool = in_db(url, run)
    return result


def test_departments_and_users(cli: Run, data_dir: Path) -> None:
    ok(cli("tenant", "create", "acme"))
    ok(cli("department", "create", "Sales", "--tenant", "acme"))
    (sales,) = orjson.loads(ok(cli("department", "list", "--tenant", "acme", "--json")).stdout)
    assert sales["name"] == "Sales"
    assert "Sales" in ok(cli("department", "list", "--tenant", "acme")).stdout
    created = ok(
        cli(
            "user",
            "create",
            "Ann@Acme.io",
            "--tenant",
            "acme",
            "--role",
            "department_admin",
            "--department",
            "Sales",
            "--password-stdin",
            input=PASSWORD + "\n",
        )
    )
    assert PASSWORD not in created.stdout + created.stderr
    (ann,) = orjson.loads(ok(cli("user", "list", "--tenant", "acme", "--json")).stdout)
    assert (ann["email"], ann["role"], ann["department_id"]) == (
        "ann@acme.io",
        "department_admin",
        sales["id"],
    )
    url = sqlite_url(data_dir)
    stored = stored_hash(url, "acme", "ann@acme.io")
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert check(url, stored, PASSWORD)
    assert not check(url, stored, PASSWORD + "!")
    # The prompt asks twice and hides the input.
    ok(cli("user", "create", "bob@acme.io", "--tenant", "acme", input=f"{PASSWORD}\n{PASSWORD}\n"))
    assert check(url, stored_hash(url, "acme", "bob@acme.io"), PASSWORD)
    # Platform admins have no tenant.
    ok(cli("user", "create", "root@example.com", "--role", "platform_admin", "--no-password"))
    (root,) = orjson.loads(ok(cli("user", "list", "--json")).stdout)
    assert (root["role"], root["tenant_id"]) == ("platform_admin", None)
    assert "ann@acme.io" in ok(cli("user", "list", "--tenant", "acme")).stdout


def test_user_create_errors(cli: Run) -> None:
    ok(cli("tenant", "create", "acme"))
    no_argv = cli("user", "create", "x@acme.io", "--tenant", "acme", "--password", PASSWORD)
    assert no_argv.exit_code == 2  # there is no way to pass a password as an argument
    cases = [
        (("--tenant", "acme", "--role", "owner"), "role"),
        (("--role", "platform_admin", "--tenant", "acme"), "platform admin"),
        (("--role", "user"), "platform admin"),
        (("--tenant", "acme", "--password-stdin"), "8 to 1024"),
    ]
    for extra, message in cases:
        result = cli("user", "create", "x@acme.io", *extra, input="short\n")
        assert result.exit_code == 1
        assert message in result.stderr
    ok(cli("user", "create", "x@acme.io", "--tenant", "acme", "--no-password"))
    again = cli("user", "create", "X@acme.io", "--tenant", "acme", "--no-password")
    assert again.exit_code == 1
    assert "already exists" in again.stderr


def test_key_for_a_user_and_the_audit_trail(cli: Run) -> None:
    ok(cli("tenant", "create", "acme"))
    ok(cli("user", "create", "ann@acme.io", "--tenant", "acme", "--no-password"))
    secret = ok(cli("key", "create", "--tenant", "acme", "--user", "ann@acme.io")).stdout.strip()
    (key,) = orjson.loads(ok(cli("key", "list", "--tenant", "acme", "--json")).stdout)
    (ann,) = orjson.loads(ok(cli("user", "list", "--tenant", "acme", "--json")).stdout)
    assert key["user_id"] == ann["id"]
    missing = cli("key", "create", "--tenant", "acme", "--user", "nobody@acme.io")
    assert missing.exit_code == 1
    ok(cli("key", "revoke", key["id"]))
    trail = orjson.loads(ok(cli("audit", "--json")).stdout)
    assert [e["action"] for e in reversed(trail)] == [
        "tenant.create",
        "user.create",
        "key.create",
        "key.revoke",
    ]
    assert {e["actor_kind"] for e in trail} == {"cli"}
    assert secret not in str(trail)
    keys_only = orjson.loads(ok(cli("audit", "--json", "--action", "key.")).stdout)
    assert [e["action"] for e in keys_only] == ["key.revoke", "key.create"]
    table = ok(cli("audit", "--tenant", "acme", "--limit", "1")).stdout
    assert "key.revoke" in table
    assert "key.create" not in table


def test_identity_cli_on_postgresql(cli: Run, pg_url: str) -> None:
    env = {"SWITCHBOARD_DATABASE_URL": pg_url}
    slug = f"pg-{secrets.token_hex(4)}"
    ok(cli("tenant", "create", slug, env=env))
    ok(cli("department", "create", "Ops", "--tenant", slug, env=env))
    ok(
        cli(
            "user",
            "create",
            "ops@example.com",
            "--tenant",
            slug,
            "--department",
            "Ops",
            "--password-stdin",
            env=env,
            input=PASSWORD + "\n",
        )
    )
    assert check(pg_url, stored_hash(pg_url, slug, "ops@example.com"), PASSWORD)
    trail = orjson.loads(ok(cli("audit", "--tenant", slug, "--json", env=env)).stdout)
    assert [e["action"] for e in trail] == ["user.create", "department.create", "tenant.create"]

"""`switchboard department`, `switchboard user`, `key create --user` and `switchboard audit`."""

from __future__ import annotations

import secrets
from datetime import timedelta
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


def sessions_for(url: str, tenant: str | None, email: str, n: int) -> list[str]:
    """``n`` sessions of one user, written as a sign-in would; returns their ids."""

    async def create(db: Database) -> list[str]:
        p = Platform(db)
        tenant_id = (await p.tenants.get(tenant)).id if tenant else None
        user = await p.users.find_by_email(tenant_id, email)
        assert user is not None
        made = [
            await p.sessions.create(
                user.id,
                tenant_id,
                max_age=timedelta(hours=1),
                client_ip="10.1.2.3",
                user_agent="laptop/1.0",
                method="password",
            )
            for _ in range(n)
        ]
        return [session.id for session, _ in made]

    ids: list[str] = in_db(url, create)
    return ids


def test_user_sessions_and_end_sessions(cli: Run, data_dir: Path) -> None:
    url = sqlite_url(data_dir)
    ok(cli("tenant", "create", "acme"))
    for email in ("ann@acme.io", "bob@acme.io"):
        ok(cli("user", "create", email, "--tenant", "acme", "--no-password"))
    ann = sessions_for(url, "acme", "ann@acme.io", 2)
    bob = sessions_for(url, "acme", "bob@acme.io", 1)
    listed = orjson.loads(
        ok(cli("user", "sessions", "ann@acme.io", "--tenant", "acme", "--json")).stdout
    )
    assert {s["id"] for s in listed} == set(ann)
    assert {(s["method"], s["client_ip"], s["current"]) for s in listed} == {
        ("password", "10.1.2.3", False)
    }
    table = ok(cli("user", "sessions", "ann@acme.io", "--tenant", "acme")).stdout
    assert all(session_id in table for session_id in ann)
    assert "laptop/1.0" in table
    ended = ok(cli("user", "end-sessions", "ann@acme.io", "--tenant", "acme"))
    assert "ended 2 session(s) of ann@acme.io" in ended.stderr
    after = ok(cli("user", "sessions", "ann@acme.io", "--tenant", "acme", "--json")).stdout
    assert orjson.loads(after) == []
    others = orjson.loads(
        ok(cli("user", "sessions", "bob@acme.io", "--tenant", "acme", "--json")).stdout
    )
    assert [s["id"] for s in others] == bob
    (row,) = orjson.loads(ok(cli("audit", "--json", "--action", "user.session.revoke_all")).stdout)
    users = orjson.loads(ok(cli("user", "list", "--tenant", "acme", "--json")).stdout)
    ann_id = next(u["id"] for u in users if u["email"] == "ann@acme.io")
    assert (row["actor_kind"], row["target"]) == ("cli", ann_id)
    assert row["details"] == {"email": "ann@acme.io", "sessions": 2}
    missing = cli("user", "end-sessions", "nobody@acme.io", "--tenant", "acme")
    assert missing.exit_code == 1
    assert "no user 'nobody@acme.io'" in missing.stderr
    wrong_tenant = cli("user", "sessions", "ann@acme.io")  # not a platform admin
    assert wrong_tenant.exit_code == 1


def test_session_commands_on_postgresql_and_for_platform_admins(cli: Run, pg_url: str) -> None:
    env = {"SWITCHBOARD_DATABASE_URL": pg_url}
    slug = f"pg-{secrets.token_hex(4)}"
    root = f"root-{secrets.token_hex(4)}@example.com"
    ok(cli("tenant", "create", slug, env=env))
    ok(cli("user", "create", "ops@example.com", "--tenant", slug, "--no-password", env=env))
    ok(cli("user", "create", root, "--role", "platform_admin", "--no-password", env=env))
    ops = sessions_for(pg_url, slug, "ops@example.com", 1)
    roots = sessions_for(pg_url, None, root, 1)

    def listed(*args: str) -> list[str]:
        out = ok(cli("user", "sessions", *args, "--json", env=env)).stdout
        return [s["id"] for s in orjson.loads(out)]

    assert listed("ops@example.com", "--tenant", slug) == ops
    assert listed(root) == roots
    ended = ok(cli("user", "end-sessions", "ops@example.com", "--tenant", slug, env=env))
    assert "ended 1 session(s)" in ended.stderr
    assert listed("ops@example.com", "--tenant", slug) == []
    assert listed(root) == roots
    assert "ended 1 session(s)" in ok(cli("user", "end-sessions", root, env=env)).stderr
    assert listed(root) == []
    trail = orjson.loads(ok(cli("audit", "--tenant", slug, "--json", env=env)).stdout)
    newest = trail[0]
    assert (newest["action"], newest["actor_kind"]) == ("user.session.revoke_all", "cli")
    assert newest["details"] == {"email": "ops@example.com", "sessions": 1}

"""The admin API and the health probes, against the gateway on a loopback port."""

from __future__ import annotations

import csv
import io

import httpx
import openai
import pytest

from conftest import RunningGateway
from switchboard.store import Database

pytestmark = pytest.mark.slow


def test_admin_api_needs_the_admin_key(gateway: RunningGateway) -> None:
    tenant_key = gateway.new_tenant("not-admin")
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {tenant_key}"},
    ):
        response = httpx.get(gateway.url + "/admin/v1/tenants", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


def test_tenant_lifecycle(gateway: RunningGateway) -> None:
    created = gateway.admin(
        "POST", "/admin/v1/tenants", json={"slug": "lifecycle", "name": "Life Cycle Ltd"}
    )
    assert created.status_code == 201
    tenant = created.json()
    assert (tenant["slug"], tenant["name"], tenant["usage_mode"]) == (
        "lifecycle",
        "Life Cycle Ltd",
        "hybrid",
    )
    assert tenant["id"].startswith("ten_")
    assert gateway.admin("GET", "/admin/v1/tenants/lifecycle").json()["id"] == tenant["id"]
    assert gateway.admin("GET", f"/admin/v1/tenants/{tenant['id']}").json()["slug"] == "lifecycle"
    slugs = [t["slug"] for t in gateway.admin("GET", "/admin/v1/tenants").json()["data"]]
    assert "lifecycle" in slugs
    duplicate = gateway.admin("POST", "/admin/v1/tenants", json={"slug": "lifecycle"})
    assert duplicate.status_code == 400
    assert duplicate.json()["error"]["param"] == "slug"
    missing = gateway.admin("GET", "/admin/v1/tenants/no-such-tenant")
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "slug"),
        ({"slug": "Bad Slug"}, "slug"),
        ({"slug": "ok-slug", "usage_mode": "cloud"}, "usage_mode"),
        ({"slug": 5}, "slug"),
    ],
)
def test_tenant_creation_is_validated(gateway: RunningGateway, body: object, param: str) -> None:
    response = gateway.admin("POST", "/admin/v1/tenants", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_usage_mode_change_takes_effect(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("switcher", "local")
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    try:
        assert "gpt-fake" not in {m.id for m in sdk.models.list()}
        slug = gateway.keys["switcher:slug"]
        changed = gateway.admin(
            "PATCH", f"/admin/v1/tenants/{slug}", json={"usage_mode": "external"}
        )
        assert changed.json()["usage_mode"] == "external"
        ids = {m.id for m in sdk.models.list()}
        assert "gpt-fake" in ids
        assert "llama-fake" not in ids
    finally:
        sdk.close()


def test_keys_are_shown_once_and_listed_without_secrets(gateway: RunningGateway) -> None:
    gateway.new_tenant("keyring")
    slug = gateway.keys["keyring:slug"]
    created = gateway.admin(
        "POST", f"/admin/v1/tenants/{slug}/keys", json={"name": "ci", "expires_in_days": 30}
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("sk-sb-")
    assert created.json()["expires_at"] is not None
    listing = gateway.admin("GET", f"/admin/v1/tenants/{slug}/keys")
    assert secret not in listing.text
    assert secret[:10] == listing.json()["data"][1]["prefix"]
    assert {k["name"] for k in listing.json()["data"]} == {"test", "ci"}
    bad = gateway.admin("POST", f"/admin/v1/tenants/{slug}/keys", json={"expires_in_days": -1})
    assert bad.status_code == 400
    unknown = gateway.admin("POST", "/admin/v1/keys/key_nope/revoke")
    assert unknown.status_code == 404


def test_revocation_is_immediate_on_the_revoking_process(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("instant")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(gateway.url + "/v1/models", headers=headers, timeout=10).status_code == 200
    slug = gateway.keys["instant:slug"]
    key_id = gateway.admin("GET", f"/admin/v1/tenants/{slug}/keys").json()["data"][0]["id"]
    revoked = gateway.admin("POST", f"/admin/v1/keys/{key_id}/revoke")
    assert revoked.json()["revoked_at"] is not None
    assert httpx.get(gateway.url + "/v1/models", headers=headers, timeout=10).status_code == 401


def test_usage_export_as_csv(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("exporter")
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    try:
        sdk.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "a"}])
    finally:
        sdk.close()
    gateway.usage("exporter", at_least=1)
    slug = gateway.keys["exporter:slug"]
    response = gateway.admin("GET", f"/admin/v1/tenants/{slug}/usage", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1
    assert rows[0]["model"] == "gpt-fake"
    assert rows[0]["status"] == "200"
    future = gateway.admin("GET", f"/admin/v1/tenants/{slug}/usage", params={"since": "2999-01-01"})
    assert future.json() == []
    bad = gateway.admin("GET", f"/admin/v1/tenants/{slug}/usage", params={"since": "yesterday"})
    assert bad.status_code == 400


def test_models_and_doctor(gateway: RunningGateway) -> None:
    models = {m["name"]: m for m in gateway.admin("GET", "/admin/v1/models").json()["data"]}
    gpt = models["gpt-fake"]["deployments"][0]
    assert gpt == {
        "provider": "openai-fake",
        "model": "gpt-4o-mini",
        "locality": "external",
        "price": {
            "version": "catalog:gpt-4o-mini@2024-01-01",
            "effective_from": "2024-01-01",
            "input_per_1m": 0.15,
            "output_per_1m": 0.6,
            "cached_input_per_1m": 0.075,
            "cache_write_per_1m": 0.15,
            "embeddings_per_1m": 0.15,
        },
    }
    llama_price = models["llama-fake"]["deployments"][0]["price"]
    assert llama_price["version"] == "free:local"
    assert (llama_price["input_per_1m"], llama_price["output_per_1m"]) == (0.0, 0.0)
    assert "sk-upstream-secret" not in gateway.admin("GET", "/admin/v1/models").text
    report = gateway.admin("GET", "/admin/v1/doctor").json()
    levels = {f["check"]: f["level"] for f in report["findings"]}
    assert levels["provider openai-fake"] == "ok"
    assert levels["provider ollama-fake"] == "ok"
    assert levels["provider nowhere"] == "fail"
    assert levels["database"] == "ok"
    assert report["ok"] is False


def test_health_probes(gateway: RunningGateway) -> None:
    assert httpx.get(gateway.url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"config": "ok", "database": "ok"}}


def test_readiness_fails_when_the_database_is_gone(gateway: RunningGateway) -> None:
    runtime = gateway.app.state.runtime
    real = runtime.platform.db
    runtime.platform.db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    try:
        ready = httpx.get(gateway.url + "/readyz", timeout=10)
    finally:
        runtime.platform.db = real
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"].startswith("unreachable")
    assert ready.json()["checks"]["config"] == "ok"


def test_unknown_routes_use_the_openai_error_shape(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url + "/v1/nothing-here", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(gateway.url + "/v1/chat/completions", timeout=10)
    assert wrong_method.status_code == 405

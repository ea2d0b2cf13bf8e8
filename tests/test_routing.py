"""Model routing: what each usage mode may see and reach, and catalog discovery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from fakes.ollama_upstream import MODELS as FAKE_OLLAMA_MODELS
from fakes.server import ServerThread
from switchboard.config import Locality, Price, parse_config
from switchboard.errors import NotFound, PermissionDenied
from switchboard.gateway.routing import Deployment, ModelCatalog, ModelRoute, build_catalog
from switchboard.metering.prices import FREE, PriceTable
from switchboard.providers import Provider, build_provider
from switchboard.providers.base import JSON, ChunkStream
from switchboard.store.tenants import UsageMode


class StubProvider:
    """Routing only reads ``name`` and ``locality``; nothing here is ever called."""

    def __init__(self, name: str, locality: Locality) -> None:
        self.name = name
        self.locality: Locality = locality

    async def chat(self, body: JSON) -> JSON:
        raise AssertionError("routing must not call the provider")

    async def stream_chat(self, body: JSON) -> ChunkStream:
        raise AssertionError("routing must not call the provider")

    async def embed(self, body: JSON) -> JSON:
        raise AssertionError("routing must not call the provider")

    async def list_models(self) -> list[str]:
        raise AssertionError("routing must not call the provider")

    async def aclose(self) -> None:
        return None


LOCAL = StubProvider("ollama", "local")
CLOUD = StubProvider("openai", "external")


def dep(model: str, provider: Provider, upstream: str) -> Deployment:
    return Deployment(model, provider, upstream, None)


def catalog_of(models: dict[str, list[Deployment]]) -> ModelCatalog:
    return ModelCatalog({name: ModelRoute(name, tuple(ds)) for name, ds in models.items()})


@pytest.fixture
def catalog() -> ModelCatalog:
    return catalog_of(
        {
            "llama": [dep("llama", LOCAL, "llama3.1:8b")],
            "gpt": [dep("gpt", CLOUD, "gpt-4o")],
            # external first: the order must not leak an external deployment to a local tenant
            "mixed": [dep("mixed", CLOUD, "gpt-4o-mini"), dep("mixed", LOCAL, "qwen2.5:7b")],
        }
    )


@pytest.mark.parametrize(
    ("mode", "visible"),
    [
        ("local", ["llama", "mixed"]),
        ("external", ["gpt", "mixed"]),
        ("hybrid", ["gpt", "llama", "mixed"]),
    ],
)
def test_visible_per_usage_mode(catalog: ModelCatalog, mode: UsageMode, visible: list[str]) -> None:
    assert catalog.visible(mode) == visible
    assert catalog.names() == ["gpt", "llama", "mixed"]


def test_route_allows_deployments_per_mode_in_order() -> None:
    a, b, c = dep("m", LOCAL, "a"), dep("m", CLOUD, "b"), dep("m", LOCAL, "c")
    route = ModelRoute("m", (a, b, c))
    assert route.allowed("local") == (a, c)
    assert route.allowed("external") == (b,)
    assert route.allowed("hybrid") == (a, b, c)
    assert replace(route, deployments=(b,)).allowed("local") == ()  # computed per instance


def test_mixed_model_resolves_per_mode(catalog: ModelCatalog) -> None:
    local = catalog.resolve("mixed", "local")
    assert local.provider is LOCAL
    assert local.upstream_model == "qwen2.5:7b"
    assert local.locality == "local"
    assert local.model == "mixed"

    external = catalog.resolve("mixed", "external")
    assert external.provider is CLOUD
    assert external.upstream_model == "gpt-4o-mini"

    assert catalog.resolve("mixed", "hybrid").model == "mixed"
    assert catalog.resolve("llama", "hybrid").provider is LOCAL
    assert catalog.resolve("gpt", "hybrid").provider is CLOUD


@pytest.mark.parametrize(("model", "mode"), [("gpt", "local"), ("llama", "external")])
def test_forbidden_model(catalog: ModelCatalog, model: str, mode: UsageMode) -> None:
    with pytest.raises(PermissionDenied) as info:
        catalog.resolve(model, mode)
    assert info.value.code == "model_not_allowed"
    assert info.value.status_code == 403
    assert info.value.param == "model"
    assert repr(model) in info.value.message


@pytest.mark.parametrize("mode", ["local", "external", "hybrid"])
def test_unknown_model(catalog: ModelCatalog, mode: UsageMode) -> None:
    with pytest.raises(NotFound) as info:
        catalog.resolve("nope", mode)
    assert info.value.code == "model_not_found"
    assert info.value.status_code == 404
    assert info.value.param == "model"


def test_empty_catalog() -> None:
    empty = catalog_of({})
    assert empty.visible("hybrid") == []
    with pytest.raises(NotFound):
        empty.resolve("ghost", "hybrid")


def test_deployments_are_a_copy(catalog: ModelCatalog) -> None:
    catalog.deployments("mixed").clear()
    assert len(catalog.deployments("mixed")) == 2
    assert catalog.deployments("nope") == []


# -- build_catalog against a real (fake) upstream ----------------------------------------------


@pytest.fixture
async def discovered(
    fake_ollama: ServerThread,
) -> AsyncIterator[tuple[ModelCatalog, dict[str, Provider]]]:
    config = parse_config(
        f"""
providers:
  - name: local-ollama
    kind: ollama
    base_url: {fake_ollama.url}
    locality: local
    discover_models: true
  - name: cloud
    kind: openai
    base_url: http://127.0.0.1:9/v1
    locality: external
    connect_timeout: 1
    discover_models: true
models:
  - name: qwen2.5:7b
    deployments: [{{provider: cloud, model: gpt-4o}}]
  - name: private
    deployments:
      - {{provider: cloud, model: my-private-model}}
  - name: priced
    deployments:
      - {{provider: cloud, model: my-private-model, price: {{input_per_1m: 1, output_per_1m: 2}}}}
""",
        source="<routing>",
    )
    providers = {p.name: build_provider(p) for p in config.providers}
    try:
        yield await build_catalog(config, providers, PriceTable(config.prices)), providers
    finally:
        for provider in providers.values():
            await provider.aclose()


async def test_build_catalog_discovers_models(
    discovered: tuple[ModelCatalog, dict[str, Provider]],
) -> None:
    catalog, providers = discovered
    upstream = [m["name"] for m in FAKE_OLLAMA_MODELS]
    assert upstream  # the fake lists some models

    for name in upstream:
        if name == "qwen2.5:7b":
            continue
        (deployment,) = catalog.deployments(name)
        assert deployment.provider is providers["local-ollama"]
        assert deployment.upstream_model == name
        assert deployment.price is not None
        assert deployment.price.current.price == FREE
        assert name in catalog.visible("local")
    assert set(catalog.names()) == {*upstream, "private", "priced"}


async def test_configured_model_wins_over_a_discovered_one(
    discovered: tuple[ModelCatalog, dict[str, Provider]],
) -> None:
    catalog, providers = discovered
    (deployment,) = catalog.deployments("qwen2.5:7b")
    assert deployment.provider is providers["cloud"]
    assert deployment.upstream_model == "gpt-4o"
    assert "qwen2.5:7b" not in catalog.visible("local")


async def test_build_catalog_prices(
    discovered: tuple[ModelCatalog, dict[str, Provider]],
) -> None:
    catalog, _ = discovered

    def current(name: str) -> Price | None:
        history = catalog.deployments(name)[0].price
        return history.current.price if history is not None else None

    gpt4o = current("qwen2.5:7b")
    assert gpt4o is not None
    assert (gpt4o.input_per_1m, gpt4o.output_per_1m) == (2.5, 10.0)
    assert current("private") is None  # external, unknown: flagged
    assert current("priced") == Price(input_per_1m=1, output_per_1m=2)


async def test_unreachable_discovering_provider_is_skipped() -> None:
    config = parse_config(
        """
providers:
  - {name: dead, kind: ollama, base_url: "http://127.0.0.1:9", locality: local,
     discover_models: true, connect_timeout: 1}
models:
  - name: still-here
    deployments: [{provider: dead, model: "llama3.1:8b"}]
"""
    )
    providers = {p.name: build_provider(p) for p in config.providers}
    try:
        catalog = await build_catalog(config, providers, PriceTable())
    finally:
        await providers["dead"].aclose()
    assert catalog.names() == ["still-here"]
    assert catalog.resolve("still-here", "local").upstream_model == "llama3.1:8b"

"""Which deployments may serve a model name for a tenant, honouring the tenant's usage mode.

A ``local`` tenant only ever sees and reaches deployments on local providers, an ``external``
tenant only external ones, a ``hybrid`` tenant both. A model with no deployment the tenant may
use is invisible to it in the model list, and asking for it by name is refused with 403. The
same rule holds for fallbacks: a fallback the tenant may not use is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from switchboard.config import BreakerConfig, GatewayConfig, Locality, ProviderConfig
from switchboard.errors import NotFound, PermissionDenied, SwitchboardError
from switchboard.gateway.breaker import CircuitBreaker
from switchboard.metering.prices import PriceHistory, PriceTable
from switchboard.providers import Provider
from switchboard.store.tenants import UsageMode

log = logging.getLogger("switchboard.routing")

_ALLOWED: dict[str, frozenset[str]] = {
    "local": frozenset({"local"}),
    "external": frozenset({"external"}),
    "hybrid": frozenset({"local", "external"}),
}


@dataclass(slots=True)
class Health:
    """What this worker knows about a deployment right now."""

    breaker: CircuitBreaker
    in_flight: int = 0
    last_error: SwitchboardError | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    first_byte: float | None = None
    total: float | None = None


def _fresh_health() -> Health:
    return Health(CircuitBreaker(BreakerConfig()))


@dataclass(frozen=True, slots=True, eq=False)
class Deployment:
    model: str
    provider: Provider
    upstream_model: str
    price: PriceHistory | None  # None: an external model with no known price (costs 0, flagged)
    weight: float = 1.0
    timeouts: Timeouts = Timeouts()
    health: Health = field(default_factory=_fresh_health)

    @property
    def locality(self) -> Locality:
        return self.provider.locality

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.upstream_model}"


@dataclass(frozen=True, slots=True, eq=False)
class ModelRoute:
    """A model name and how to serve it: its deployments, balancing, and fallbacks."""

    name: str
    deployments: tuple[Deployment, ...]
    strategy: str = "weighted"
    fallbacks: tuple[str, ...] = ()
    fallback_on_context_window: bool = False
    # The deployments each usage mode may use, in order; built once (a provider's locality is
    # fixed by its configuration), so the hot path does one dict lookup.
    _by_mode: dict[str, tuple[Deployment, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_mode = {
            mode: tuple(d for d in self.deployments if d.locality in localities)
            for mode, localities in _ALLOWED.items()
        }
        object.__setattr__(self, "_by_mode", by_mode)

    def allowed(self, mode: UsageMode) -> tuple[Deployment, ...]:
        return self._by_mode[mode]


class ModelCatalog:
    def __init__(self, routes: dict[str, ModelRoute]) -> None:
        self._routes = routes
        self._visible = {
            mode: sorted(name for name, route in routes.items() if route.allowed(mode))  # type: ignore[arg-type]
            for mode in _ALLOWED
        }

    def names(self) -> list[str]:
        return sorted(self._routes)

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def deployments(self, name: str) -> list[Deployment]:
        route = self._routes.get(name)
        return list(route.deployments) if route else []

    def all_deployments(self) -> list[Deployment]:
        return [d for route in self._routes.values() for d in route.deployments]

    def visible(self, mode: UsageMode) -> list[str]:
        return self._visible[mode]

    def route(self, name: str, mode: UsageMode) -> ModelRoute:
        """The model's route if the tenant may use it; 404 or 403 otherwise."""
        route = self._routes.get(name)
        if route is None:
            raise NotFound(
                f"the model {name!r} does not exist", param="model", code="model_not_found"
            )
        if not route.allowed(mode):
            where = "local" if mode == "local" else "external"
            raise PermissionDenied(
                f"the model {name!r} is not available to this tenant: its usage mode is "
                f"{mode!r}, which only allows {where} providers",
                param="model",
                code="model_not_allowed",
            )
        return route

    def chain(self, name: str, mode: UsageMode) -> list[ModelRoute]:
        """The model, then its fallbacks in order, leaving out any the usage mode forbids."""
        first = self.route(name, mode)
        chain = [first]
        for fallback in first.fallbacks:
            route = self._routes.get(fallback)
            if route is not None and route.allowed(mode) and route not in chain:
                chain.append(route)
        return chain

    def resolve(self, name: str, mode: UsageMode) -> Deployment:
        """The first deployment the tenant may use, without balancing (tools and tests)."""
        return self.route(name, mode).allowed(mode)[0]


async def build_catalog(
    config: GatewayConfig, providers: dict[str, Provider], prices: PriceTable
) -> ModelCatalog:
    """The configured models, plus every upstream model of providers with discover_models."""
    pconfs = {p.name: p for p in config.providers}
    breaker = config.router.breaker
    routes: dict[str, ModelRoute] = {}
    for model in config.models:
        deployments = tuple(
            _deployment(
                model.name,
                providers[d.provider],
                d.model,
                prices.resolve(d.model, locality=pconfs[d.provider].locality, configured=d.price),
                pconf=pconfs[d.provider],
                breaker=breaker,
                weight=d.weight,
            )
            for d in model.deployments
        )
        routes[model.name] = ModelRoute(
            model.name,
            deployments,
            model.strategy,
            tuple(model.fallbacks),
            model.fallback_on_context_window,
        )
    for pconf in config.providers:
        if not pconf.discover_models:
            continue
        provider = providers[pconf.name]
        try:
            upstream_models = await provider.list_models()
        except SwitchboardError as exc:
            log.warning("cannot list models of provider %r: %s", pconf.name, exc.message)
            continue
        for upstream in upstream_models:
            if upstream not in routes:
                price = prices.resolve(upstream, locality=pconf.locality)
                deployment = _deployment(
                    upstream, provider, upstream, price, pconf=pconf, breaker=breaker
                )
                routes[upstream] = ModelRoute(upstream, (deployment,))
    return ModelCatalog(routes)


def _deployment(
    name: str,
    provider: Provider,
    upstream: str,
    price: PriceHistory | None,
    *,
    pconf: ProviderConfig,
    breaker: BreakerConfig,
    weight: float = 1.0,
) -> Deployment:
    if price is None:
        log.warning("no price known for %r on provider %r: it will cost 0", upstream, pconf.name)
    return Deployment(
        name,
        provider,
        upstream,
        price,
        weight=weight,
        timeouts=Timeouts(pconf.first_byte_timeout, pconf.total_timeout),
        health=Health(CircuitBreaker(breaker)),
    )

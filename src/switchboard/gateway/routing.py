"""Which deployment serves a model name for a tenant, honouring the tenant's usage mode.

A ``local`` tenant only ever sees and reaches deployments on local providers, an ``external``
tenant only external ones, a ``hybrid`` tenant both. A model with no deployment the tenant may
use is invisible to it in the model list, and asking for it by name is refused with 403.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from switchboard.config import GatewayConfig, Locality, Price
from switchboard.errors import NotFound, PermissionDenied, SwitchboardError
from switchboard.metering.prices import PriceTable
from switchboard.providers import Provider
from switchboard.store.tenants import UsageMode

log = logging.getLogger("switchboard.routing")

_ALLOWED: dict[str, frozenset[str]] = {
    "local": frozenset({"local"}),
    "external": frozenset({"external"}),
    "hybrid": frozenset({"local", "external"}),
}


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str
    provider: Provider
    upstream_model: str
    price: Price | None  # None: an external model with no known price (costs 0, flagged)

    @property
    def locality(self) -> Locality:
        return self.provider.locality


class ModelCatalog:
    def __init__(self, models: dict[str, list[Deployment]]) -> None:
        self._models = models
        self._visible = {
            mode: sorted(
                name
                for name, deployments in models.items()
                if any(d.locality in allowed for d in deployments)
            )
            for mode, allowed in _ALLOWED.items()
        }

    def names(self) -> list[str]:
        return sorted(self._models)

    def deployments(self, name: str) -> list[Deployment]:
        return list(self._models.get(name, ()))

    def visible(self, mode: UsageMode) -> list[str]:
        return self._visible[mode]

    def resolve(self, name: str, mode: UsageMode) -> Deployment:
        deployments = self._models.get(name)
        if not deployments:
            raise NotFound(
                f"the model {name!r} does not exist", param="model", code="model_not_found"
            )
        allowed = _ALLOWED[mode]
        for deployment in deployments:
            if deployment.locality in allowed:
                return deployment
        where = "local" if mode == "local" else "external"
        raise PermissionDenied(
            f"the model {name!r} is not available to this tenant: its usage mode is "
            f"{mode!r}, which only allows {where} providers",
            param="model",
            code="model_not_allowed",
        )


async def build_catalog(
    config: GatewayConfig, providers: dict[str, Provider], prices: PriceTable
) -> ModelCatalog:
    """The configured models, plus every upstream model of providers with discover_models."""
    models: dict[str, list[Deployment]] = {}
    for model in config.models:
        models[model.name] = [
            _deployment(model.name, providers[d.provider], d.model, d.price, prices)
            for d in model.deployments
        ]
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
            models.setdefault(upstream, [_deployment(upstream, provider, upstream, None, prices)])
    return ModelCatalog(models)


def _deployment(
    name: str, provider: Provider, upstream: str, configured: Price | None, prices: PriceTable
) -> Deployment:
    price = prices.resolve(upstream, locality=provider.locality, configured=configured)
    if price is None:
        log.warning("no price known for %r on provider %r: it will cost 0", upstream, provider.name)
    return Deployment(name, provider, upstream, price)

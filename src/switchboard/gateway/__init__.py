"""The pipe: routing a request to a deployment, calling it, and metering the result."""

from switchboard.gateway.pipeline import Gateway, route_headers
from switchboard.gateway.router import Router
from switchboard.gateway.routing import Deployment, ModelCatalog, build_catalog
from switchboard.gateway.streams import MeteredStream

__all__ = [
    "Deployment",
    "Gateway",
    "MeteredStream",
    "ModelCatalog",
    "Router",
    "build_catalog",
    "route_headers",
]

"""The pipe: routing a request to a deployment, calling it, and metering the result."""

from switchboard.gateway.pipeline import Gateway, MeteredStream
from switchboard.gateway.routing import Deployment, ModelCatalog, build_catalog

__all__ = ["Deployment", "Gateway", "MeteredStream", "ModelCatalog", "build_catalog"]

"""Observability: Prometheus metrics fed by the usage events (see `metrics`)."""

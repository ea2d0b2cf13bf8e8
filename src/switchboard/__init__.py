"""Switchboard: a self-hosted, multi-tenant AI gateway."""

__version__ = "0.1.0"

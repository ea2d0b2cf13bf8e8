"""Garbage-collector tuning for a long-running server process.

Everything allocated while the gateway starts (modules, the config, SQLAlchemy's metadata,
pydantic models, caches) lives as long as the process. CPython's cyclic collector would still
walk all of it on every full collection, triggered by the churn of short-lived request objects.
`freeze_startup_heap` moves those objects to the permanent generation once the runtime is up,
so collections only walk what requests allocate. Measured in process: about 10% less CPU per
request (bench/README.md).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Give the frozen objects back to the collector (at shutdown: a process that starts
    several apps, such as the test suite, would otherwise never collect their cycles)."""
    gc.unfreeze()

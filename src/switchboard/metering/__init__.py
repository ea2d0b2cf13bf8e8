"""Metering: the usage event, the price table, and the recorder that writes events."""

from switchboard.metering.prices import PriceTable
from switchboard.metering.recorder import UsageRecorder, UsageSink
from switchboard.metering.usage import UsageEvent

__all__ = ["PriceTable", "UsageEvent", "UsageRecorder", "UsageSink"]

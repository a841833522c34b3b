"""``/metrics`` and ``/readyz`` of the HTTP bridge (``saltbus http``).

The bridge is a client of the bus: its own gauges (clients streaming, the bus
connection), and, when the bus is saltbus's, the publisher's metrics and
readiness asked over its socket (a Salt publisher keeps no statistics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from saltbus.client.admin import fetch_stats
from saltbus.config import Config
from saltbus.errors import BusError
from saltbus.metrics.bus import BusCollector
from saltbus.metrics.health import Check, Readiness, Status
from saltbus.metrics.probe import STATS_TIMEOUT, remote_readiness

log = logging.getLogger("saltbus.metrics")


class _BridgeCollector(Collector):
    def __init__(self, clients: int, connected: bool) -> None:
        self._clients = clients
        self._connected = connected

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "saltbus_http_clients",
            "Streams (SSE and WebSocket) the HTTP bridge serves now",
            value=self._clients,
        )
        yield GaugeMetricFamily(
            "saltbus_http_bus_connected",
            "1 while the HTTP bridge is connected to the bus",
            value=1 if self._connected else 0,
        )


async def bridge_metrics(config: Config, *, clients: int, connected: bool) -> bytes:
    registry = CollectorRegistry()
    registry.register(_BridgeCollector(clients, connected))
    if connected and config.served_by_saltbus():
        try:
            stats = await asyncio.to_thread(fetch_stats, config, STATS_TIMEOUT)
        except (BusError, OSError) as exc:
            log.warning("no statistics from the publisher for /metrics: %s", exc)
        else:
            registry.register(BusCollector(lambda: stats))
    return generate_latest(registry)


async def bridge_readiness(config: Config, *, connected: bool) -> Readiness:
    where = str(config.pub_address)
    if not connected:
        return Readiness((Check("bus", Status.CRITICAL, f"not connected to {where}"),))
    bus = Check("bus", Status.OK, f"connected to {where}")
    if not config.served_by_saltbus():
        return Readiness((bus,))
    publisher = await remote_readiness(config)
    return Readiness((bus, *publisher.checks))

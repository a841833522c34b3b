"""The metrics of a publisher: in its own process, or asked over the bus.

In ``saltbus serve`` the collector reads ``Server.stats()`` directly and the
journal's commit times feed a histogram; elsewhere (``saltbus http``)
the same statistics come from the running publisher over
its socket, and the histogram is not available.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest

from saltbus.client.admin import fetch_stats
from saltbus.config import Config
from saltbus.metrics.bus import BusCollector, commit_histogram
from saltbus.metrics.endpoint import MetricsEndpoint
from saltbus.metrics.health import Readiness, readiness
from saltbus.metrics.probe import STATS_TIMEOUT

if TYPE_CHECKING:
    from saltbus.server import Server


class ServerMetrics:
    """A running :class:`Server`'s metrics and readiness. Create it before
    ``server.startup()`` (the commit histogram is handed to the journal then),
    and mark it :attr:`serving` once the sockets are bound."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.registry = CollectorRegistry()
        server.commit_observer = commit_histogram(self.registry).observe
        self.registry.register(BusCollector(server.stats))
        self.serving = False

    async def render(self) -> bytes:
        return generate_latest(self.registry)

    async def readiness(self) -> Readiness:
        stats = self.server.stats()
        return readiness(
            stats,
            serving=self.serving,
            max_returner_lag=self.server.config.metrics_max_returner_lag,
        )

    def endpoint(self, listen: str) -> MetricsEndpoint:
        return MetricsEndpoint(listen, metrics=self.render, readiness=self.readiness)


async def remote_metrics(config: Config, timeout: float = STATS_TIMEOUT) -> bytes:
    """The exposition of the publisher serving ``config``'s bus, asked over its socket."""
    stats = await asyncio.to_thread(fetch_stats, config, timeout)
    registry = CollectorRegistry()
    registry.register(BusCollector(lambda: stats))
    return generate_latest(registry)

"""``saltbus exporter``: Salt's job metrics for any bus, a Salt master's too.

A client of the bus (saltbus's :class:`AsyncClient`, so Salt's publisher in
ipc or tcp mode works as well as saltbus's), subscribed to ``salt/job/``,
counting into :class:`SaltJobMetrics`, served on its own metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest

from saltbus.client.aio import AsyncClient
from saltbus.config import Config
from saltbus.errors import BusTimeoutError, NoPublisherError, SlowConsumerError
from saltbus.event import MatchType
from saltbus.metrics.endpoint import MetricsEndpoint
from saltbus.metrics.health import Check, Readiness, Status
from saltbus.metrics.salt_jobs import JOB_TAG_PREFIX, JobMetricsOptions, SaltJobMetrics

log = logging.getLogger("saltbus.metrics")

CONNECT_RETRY: Final = 1.0
READ_TIMEOUT: Final = 1.0


class JobExporter:
    """Counts the jobs on ``config``'s bus until :meth:`stop`."""

    def __init__(self, config: Config, options: JobMetricsOptions | None = None) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.jobs = SaltJobMetrics(self.registry, options)
        self._lost = Counter(
            "saltbus_exporter_overflows",
            "Times the exporter read too slowly and its subscription dropped job events",
            registry=self.registry,
        )
        self.connected = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Safe from a signal handler: it only sets a flag."""
        self._stop.set()

    async def render(self) -> bytes:
        return generate_latest(self.registry)

    async def readiness(self) -> Readiness:
        where = str(self.config.pub_address)
        if self.connected:
            return Readiness((Check("bus", Status.OK, f"subscribed at {where}"),))
        return Readiness((Check("bus", Status.CRITICAL, f"not connected to {where}"),))

    def endpoint(self, listen: str) -> MetricsEndpoint:
        return MetricsEndpoint(listen, metrics=self.render, readiness=self.readiness)

    async def run(self) -> None:
        """Connect (waiting for a publisher that is not there yet) and count."""
        client = AsyncClient(self.config, reconnect=True)
        try:
            subscription = client.subscribe(JOB_TAG_PREFIX, MatchType.STARTSWITH)
            while not self._stop.is_set():
                try:
                    await client.connect()
                    break
                except NoPublisherError as exc:
                    log.warning("%s; retrying", exc)
                    await self._sleep(CONNECT_RETRY)
            self.connected = True
            log.info("counting Salt's jobs on %s", self.config.pub_address)
            while not self._stop.is_set():
                try:
                    event = await subscription.next(READ_TIMEOUT)
                except BusTimeoutError:
                    continue
                except SlowConsumerError as exc:
                    log.warning("%s", exc)
                    self._lost.inc()
                    continue
                self.jobs.observe(event)
        finally:
            self.connected = False
            await client.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

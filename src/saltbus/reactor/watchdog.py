"""A watchdog on the reactor's subscription.

Once, under load, a reactor stopped receiving events with nothing logged. The
publisher sends nothing on an idle subscription (no heartbeat), so silence
alone cannot tell an idle bus from a dead subscription: after
``reactor_watchdog`` seconds without an event the watchdog fires a probe,
``saltbus/reactor/watchdog`` (the reactor reads every tag, so its own probe
comes back through the subscription it tests), and waits as long again. Any
event in that time clears it; none, and it says so and drops the publish
connection, which the client reopens and resumes from its last seq: nothing
fired meanwhile is skipped when the bus has a journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from saltbus.client.aio import AsyncClient
from saltbus.errors import SaltbusError

log = logging.getLogger("saltbus.reactor")

PROBE_TAG: Final = "saltbus/reactor/watchdog"


class SubscriptionWatchdog:
    """Call :meth:`saw` for every event read; :meth:`run` until cancelled."""

    def __init__(self, client: AsyncClient, idle: float, name: str) -> None:
        self.client = client
        self.idle = idle
        self.name = name
        self.probes = 0
        self.restarts = 0
        self._last = time.monotonic()
        self._seen = asyncio.Event()

    def saw(self) -> None:
        self._last = time.monotonic()
        self._seen.set()

    async def run(self) -> None:
        while True:
            silent = time.monotonic() - self._last
            if silent < self.idle:
                await asyncio.sleep(self.idle - silent)
                continue
            if not await self._probe():
                self.restarts += 1
                log.warning(
                    "reactor subscription silent for %.0f s (no event, its probe %s did not "
                    "come back); re-establishing it",
                    time.monotonic() - self._last,
                    PROBE_TAG,
                )
                self.client.drop_connection()
                self._last = time.monotonic()  # give the new connection a full period

    async def _probe(self) -> bool:
        """Whether any event (the probe, or another) arrived within ``idle`` of it."""
        self.probes += 1
        self._seen.clear()
        try:
            await self.client.fire(PROBE_TAG, {"reactor": self.name}, timeout=self.idle)
        except SaltbusError as exc:
            log.debug("watchdog probe not fired: %s", exc)
        try:
            await asyncio.wait_for(self._seen.wait(), self.idle)
        except TimeoutError:
            return False
        return True

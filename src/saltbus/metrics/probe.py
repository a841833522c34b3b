"""Readiness of a publisher in another process, asked over its socket.

Without prometheus_client: ``saltbus health`` works with the core install.
"""

from __future__ import annotations

import asyncio
from typing import Final

from saltbus.client.admin import fetch_stats
from saltbus.config import Config
from saltbus.errors import BusError
from saltbus.metrics.health import Readiness, Status, readiness, unreachable

STATS_TIMEOUT: Final = 2.0


def readiness_of(config: Config, timeout: float = STATS_TIMEOUT) -> Readiness:
    """Ask the publisher serving ``config``'s bus for its statistics and judge
    them (blocking): CRITICAL when nothing serves the bus, UNKNOWN when what
    answers keeps no statistics (a Salt publisher) or does not answer in time."""
    try:
        stats = fetch_stats(config, timeout)
    except TimeoutError as exc:  # BusTimeoutError too
        return unreachable(str(exc), Status.UNKNOWN)
    except (BusError, OSError) as exc:
        return unreachable(str(exc))
    return readiness(stats, max_returner_lag=config.metrics_max_returner_lag)


async def remote_readiness(config: Config, timeout: float = STATS_TIMEOUT) -> Readiness:
    return await asyncio.to_thread(readiness_of, config, timeout)

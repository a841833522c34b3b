"""saltbus.reactor.pool against a real bus in this process: a full queue drops
reactions and says so, with counts (retries: test_reactor_retry; gated runs:
test_reactor_concurrency)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from saltbus.config import Config
from saltbus.errors import BusTimeoutError
from saltbus.event import Event
from tests.test_reactor_engine import running, setup


@pytest.mark.usefixtures("publisher")
def test_a_full_queue_is_reported_with_counts(bus_config: Config, tmp_path: Path) -> None:
    text = "slow:\n  cmd.run:\n    - cmd: [sleep, '0.2']\n"
    config = setup(
        bus_config,
        tmp_path,
        {"s.sls": text},
        {"work": ["s.sls"]},
        reactor_worker_threads=1,
        reactor_worker_hwm=2,
    )

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            for n in range(20):
                await client.fire("work", {"n": n})
            events: list[Event] = []
            with contextlib.suppress(BusTimeoutError):
                while True:
                    events.append(await reports.next(2.0))
        overflows = [e for e in events if e.tag == "saltbus/reactor/overflow"]
        rets = [e for e in events if e.tag == "saltbus/reactor/slow/ret"]
        assert overflows, "a full queue must be reported"
        dropped = sum(e.data["dropped"] for e in overflows)
        assert dropped == reactor.stats.dropped > 0
        assert overflows[-1].data["total_dropped"] == dropped
        assert overflows[0].data["reactions"]["slow"] >= 1
        assert overflows[0].data["reactor_worker_hwm"] == 2
        assert len(rets) + dropped == 20

    asyncio.run(main())

"""saltbus.reactor.outbox against a real bus in this process: a ret event too
large for max_event_size is fired without its result, saying why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from saltbus.config import Config
from tests.test_reactor_engine import collect, running, setup

LIMIT = 4096


@pytest.mark.usefixtures("publisher")
def test_a_ret_over_max_event_size_is_fired_without_its_result(
    bus_config: Config, tmp_path: Path
) -> None:
    text = (
        f"loud:\n  cmd.run:\n    - cmd: [printf, '%0{LIMIT * 2}d', '0']\n"
        "quiet:\n  cmd.run:\n    - cmd: [sh, -c, 'echo fine']\n"
    )
    # Only the reactor's client has the small limit: it refuses the frame itself.
    config = setup(bus_config, tmp_path, {"f.sls": text}, {"go": ["f.sls"]}, max_event_size=LIMIT)

    async def main() -> None:
        async with running(config) as (reactor, client, reports):
            sent = await client.fire("go", {}, ack=True)
            rets = {e.tag: e.data for e in await collect(reports, 2)}
            assert reactor.stats.as_dict()["succeeded"] == 2
        loud = rets["saltbus/reactor/loud/ret"]
        assert "result" not in loud and loud["success"] is False
        assert f"over max_event_size ({LIMIT} bytes)" in loud["error"]
        assert (loud["trigger_tag"], loud["trigger_seq"]) == ("go", sent.seq)
        quiet = rets["saltbus/reactor/quiet/ret"]
        assert quiet["success"] is True and quiet["result"]["stdout"] == "fine\n"

    asyncio.run(main())

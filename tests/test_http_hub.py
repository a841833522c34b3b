"""The HTTP bridge's fan-out: one bus connection, a bounded queue per member."""

from __future__ import annotations

import asyncio
import time

import pytest

from saltbus.client import Sender
from saltbus.config import Config
from saltbus.errors import SaltbusError
from saltbus.event import Event
from saltbus.http.hub import Hub, MemberLaggedError
from saltbus.server import EmbeddedPublisher


def _tag_starts(prefix: str):
    return lambda event: event.tag.startswith(prefix)


async def _started(hub: Hub) -> None:
    hub.start()
    await asyncio.wait_for(hub.connected.wait(), 10)


def test_members_get_what_their_filter_accepts(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> tuple[list[str], list[str]]:
        hub = Hub(bus_config)
        try:
            await _started(hub)
            apps = hub.join(_tag_starts("app/"), 100)
            everything = hub.join(lambda event: True, 100)
            for tag in ("app/a", "salt/auth", "app/b"):
                await hub.fire(tag, {})
            got_apps: list[Event] = []
            while len(got_apps) < 2:
                got_apps += await apps.take(10, 5)
            got_all: list[Event] = []
            while len(got_all) < 3:
                got_all += await everything.take(10, 5)
            return [e.tag for e in got_apps], [e.tag for e in got_all]
        finally:
            await hub.close()

    apps, everything = asyncio.run(main())
    assert apps == ["app/a", "app/b"]
    assert everything == ["app/a", "salt/auth", "app/b"]


def test_fire_is_acknowledged_with_its_seq(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> list[int | None]:
        hub = Hub(bus_config)
        try:
            await _started(hub)
            return [(await hub.fire("app/x", {"n": n})).seq for n in range(3)]
        finally:
            await hub.close()

    seqs = asyncio.run(main())
    assert all(isinstance(s, int) for s in seqs)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_a_full_member_lags_alone(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> tuple[bool, int, int]:
        hub = Hub(bus_config)
        try:
            await _started(hub)
            slow = hub.join(lambda event: True, 5)
            fast = hub.join(lambda event: True, 1000)
            for n in range(20):
                await hub.fire("app/x", {"n": n})
            got: list[Event] = []
            while len(got) < 20:
                got += await fast.take(100, 5)
            # Under the one tree: a program catching SaltbusError catches it.
            with pytest.raises(SaltbusError) as lag:
                await slow.take(100, 0)
            assert isinstance(lag.value, MemberLaggedError)
            return slow.lagged, hub.members, len(got)
        finally:
            await hub.close()

    lagged, members, fast_got = asyncio.run(main())
    assert lagged
    assert members == 1  # the lagged member left the fan-out
    assert fast_got == 20


def test_fanout_overflow_lags_every_member(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> tuple[bool, bool]:
        hub = Hub(bus_config, max_pending=5)
        try:
            await _started(hub)
            members = [hub.join(lambda event: True, 1000) for _ in range(2)]
            # Fired while the loop is blocked: they all arrive in one read,
            # more than the shared subscription may hold.
            with Sender(bus_config) as sender:
                for n in range(200):
                    sender.fire("app/x", {"n": n})
            time.sleep(0.3)
            outcomes = []
            for member in members:
                try:
                    while True:
                        if not await member.take(1000, 2):
                            outcomes.append(False)
                            break
                except MemberLaggedError:
                    outcomes.append(True)
            return outcomes[0], outcomes[1]
        finally:
            await hub.close()

    assert asyncio.run(main()) == (True, True)


def test_waits_for_a_publisher_that_starts_later(bus_config: Config):
    async def main() -> str:
        hub = Hub(bus_config)
        hub.start()
        member = hub.join(lambda event: True, 100)
        await asyncio.sleep(0.3)
        assert not hub.connected.is_set()
        with EmbeddedPublisher(bus_config):
            try:
                await asyncio.wait_for(hub.connected.wait(), 10)
                await hub.fire("late/x", {})
                got = await member.take(10, 5)
                return got[0].tag
            finally:
                await hub.close()

    assert asyncio.run(main()) == "late/x"


def test_wait_for_seq(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> tuple[bool, bool]:
        hub = Hub(bus_config)
        try:
            await _started(hub)
            event = await hub.fire("app/x", {})
            assert event.seq is not None
            reached = await hub.wait_for_seq(event.seq, 5)
            beyond = await hub.wait_for_seq(event.seq + 1000, 0.2)
            return reached, beyond
        finally:
            await hub.close()

    assert asyncio.run(main()) == (True, False)

"""One HTTP connection's events: live from the fan-out, or caught up from the
journal on a client of its own and handed back to the fan-out, with no gap
and no duplicate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from saltbus.client import Sender
from saltbus.config import Config
from saltbus.event import Event
from saltbus.http.hub import Hub
from saltbus.http.stream import EventStream
from saltbus.server import EmbeddedPublisher

T = TypeVar("T")


def _everything(tag: str) -> bool:
    return True


async def _with_hub(config: Config, body: Callable[[Hub], Awaitable[T]]) -> T:
    hub = Hub(config)
    hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 10)
        return await body(hub)
    finally:
        await hub.close()


async def _collect(batches: AsyncIterator[list[Event]], count: int) -> list[Event]:
    got: list[Event] = []
    while len(got) < count:
        got += await asyncio.wait_for(anext(batches), 10)
    return got


async def _fire(hub: Hub, tag: str, count: int) -> list[int]:
    seqs = []
    for n in range(count):
        seq = (await hub.fire(tag, {"n": n})).seq
        assert seq is not None
        seqs.append(seq)
    return seqs


def test_a_fresh_stream_is_live_only(bus_config: Config, publisher: EmbeddedPublisher):
    async def body(hub: Hub) -> list[str]:
        await _fire(hub, "old/x", 3)
        await hub.wait_for_seq(3, 5)
        stream = EventStream(hub, bus_config, may_read=_everything)
        batches = aiter(stream)
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.2)  # the stream joined the fan-out
        await hub.fire("new/x", {})
        got = await asyncio.wait_for(first, 10)
        await stream.close()
        return [e.tag for e in got]

    assert asyncio.run(_with_hub(bus_config, body)) == ["new/x"]


def test_resume_replays_then_hands_over(bus_config: Config, publisher: EmbeddedPublisher):
    async def body(hub: Hub) -> tuple[list[int], list[int], bool, bool, int]:
        seqs = await _fire(hub, "app/x", 20)
        await hub.wait_for_seq(seqs[-1], 5)
        stream = EventStream(hub, bus_config, may_read=_everything, since=seqs[4])
        batches = aiter(stream)
        replayed = await _collect(batches, 15)
        catching_up = stream.catching_up
        live_seqs = await _fire(hub, "app/x", 5)
        live = await _collect(batches, 5)
        handed_over = not stream.catching_up
        await stream.close()
        return (
            [e.seq for e in replayed + live],  # type: ignore[misc]
            seqs[5:] + live_seqs,
            catching_up,
            handed_over,
            stream.catch_ups,
        )

    got, expected, catching_up, handed_over, catch_ups = asyncio.run(_with_hub(bus_config, body))
    assert got == expected
    assert catching_up and handed_over and catch_ups == 1


def test_resume_at_the_head_joins_the_fanout_directly(
    bus_config: Config, publisher: EmbeddedPublisher
):
    async def body(hub: Hub) -> tuple[bool, list[str]]:
        seqs = await _fire(hub, "app/x", 3)
        await hub.wait_for_seq(seqs[-1], 5)
        stream = EventStream(hub, bus_config, may_read=_everything, since=seqs[-1])
        batches = aiter(stream)
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.2)
        catching_up = stream.catching_up
        await hub.fire("app/next", {})
        got = await asyncio.wait_for(first, 10)
        await stream.close()
        return catching_up, [e.tag for e in got]

    assert asyncio.run(_with_hub(bus_config, body)) == (False, ["app/next"])


def test_a_slow_stream_catches_up_from_the_journal(
    bus_config: Config, publisher: EmbeddedPublisher
):
    async def body(hub: Hub) -> tuple[list[int], int, bool]:
        stream = EventStream(hub, bus_config, may_read=_everything, queue_size=5, idle=0.2)
        batches = aiter(stream)
        assert await asyncio.wait_for(anext(batches), 10) == []  # joined, idle
        # Fired while nothing reads the stream: its fan-out queue of 5 overflows.
        with Sender(bus_config) as sender:
            for n in range(50):
                sender.fire("app/x", {"n": n})
        time.sleep(0.3)
        got = await _collect(batches, 50)
        more = await _collect(batches, 0)
        assert more == []
        await hub.fire("app/after", {})
        after = await _collect(batches, 1)
        await stream.close()
        return [e.data["n"] for e in got], stream.catch_ups, after[0].tag == "app/after"

    numbers, catch_ups, after = asyncio.run(_with_hub(bus_config, body))
    assert numbers == list(range(50))
    assert catch_ups >= 1
    assert after


def test_filters_and_grants_apply_to_both_sources(bus_config: Config, publisher: EmbeddedPublisher):
    def may_read(tag: str) -> bool:
        return not tag.startswith("app/secret")

    async def body(hub: Hub) -> list[str]:
        start = (await hub.fire("app/start", {})).seq
        for tag in ("app/a", "app/secret/1", "other/x", "app/b"):
            await hub.fire(tag, {})
        stream = EventStream(hub, bus_config, may_read=may_read, tag="app/", since=start)
        batches = aiter(stream)
        got = await _collect(batches, 2)
        for tag in ("app/secret/2", "other/y", "app/c"):
            await hub.fire(tag, {})
        got += await _collect(batches, 1)
        await stream.close()
        return [e.tag for e in got]

    assert asyncio.run(_with_hub(bus_config, body)) == ["app/a", "app/b", "app/c"]


def test_a_resume_point_ahead_of_the_bus_starts_live(
    bus_config: Config, publisher: EmbeddedPublisher
):
    async def body(hub: Hub) -> list[str]:
        await hub.fire("app/x", {})
        # As if the publisher's numbering started again (no journal, restarted).
        stream = EventStream(hub, bus_config, may_read=_everything, since=10_000)
        batches = aiter(stream)
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(1.5)  # past the grace period
        await hub.fire("app/live", {})
        got = await asyncio.wait_for(first, 10)
        await stream.close()
        return [e.tag for e in got]

    assert asyncio.run(_with_hub(bus_config, body)) == ["app/live"]


def test_a_publisher_restarted_without_journal_numbers_anew(bus_config: Config):
    config = bus_config.replace(journal="none")

    async def main() -> tuple[list[int | None], list[tuple[str, int | None]]]:
        hub = Hub(config)
        stream = EventStream(hub, config, may_read=_everything, idle=0.2)
        batches = aiter(stream)
        try:
            with EmbeddedPublisher(config):
                hub.start()
                await asyncio.wait_for(hub.connected.wait(), 10)
                assert await anext(batches) == []  # joined
                await _fire(hub, "before/x", 3)
                before = await _collect(batches, 3)
                epoch = hub.client.session.epoch
            with EmbeddedPublisher(config):
                deadline = time.monotonic() + 10
                while hub.client.session.epoch == epoch:  # until the hub is back
                    assert time.monotonic() < deadline, "the hub did not reconnect"
                    await asyncio.sleep(0.02)
                await _fire(hub, "after/x", 2)
                after = await _collect(batches, 2)
                await stream.close()
            return [e.seq for e in before], [(e.tag, e.seq) for e in after]
        finally:
            await hub.close()

    before, after = asyncio.run(main())
    assert before == [1, 2, 3]
    # Numbered from 1 again: not taken for duplicates of the first three.
    assert after == [("after/x", 1), ("after/x", 2)]

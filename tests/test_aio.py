"""The asyncio client against an in-process publisher."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from saltbus import (
    AsyncClient,
    BusClosedError,
    BusTimeoutError,
    Config,
    JournalUnavailableError,
    LocalProtocolError,
    NoPublisherError,
    SlowConsumerError,
)
from saltbus.control import Nack, encode_control
from saltbus.server import EmbeddedPublisher, Server
from saltbus.wire import Framing
from tests.firing_support import saltbus_lock, stand_in


def test_fire_and_iterate(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> list[int]:
        async with AsyncClient(bus_config) as bus:
            sub = bus.subscribe("app/")
            for n in range(10):
                await bus.fire("noise/x", {"n": n})
                await bus.fire("app/evt", {"n": n})
            got = []
            async for event in sub:
                got.append(event.data["n"])
                assert event.seq is not None
                if len(got) == 10:
                    break
            return got

    assert asyncio.run(main()) == list(range(10))


def test_next_times_out(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> None:
        async with AsyncClient(bus_config) as bus:
            sub = bus.subscribe()
            with pytest.raises(BusTimeoutError):
                await sub.next(timeout=0.1)

    asyncio.run(main())


def test_match_type_regex(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> str:
        async with AsyncClient(bus_config) as bus:
            sub = bus.subscribe(r"salt/job/\d+/ret", "regex")
            await bus.fire("salt/job/abc/ret", {})
            await bus.fire("salt/job/42/ret/web1", {})
            return (await sub.next(timeout=5)).tag

    assert asyncio.run(main()) == "salt/job/42/ret/web1"


def test_slow_consumer_is_told_how_many_were_dropped(
    bus_config: Config, publisher: EmbeddedPublisher
):
    async def main() -> tuple[str, list[int]]:
        async with AsyncClient(bus_config) as bus:
            slow = bus.subscribe("s/", max_pending=5)
            fast = bus.subscribe("s/")
            for n in range(20):
                await bus.fire("s/evt", {"n": n})
            seen_fast = [(await fast.next(timeout=5)).data["n"] for _ in range(20)]
            with pytest.raises(SlowConsumerError) as caught:
                await slow.next(timeout=5)
            kept = [(await slow.next(timeout=5)).data["n"] for _ in range(5)]
            assert seen_fast == list(range(20))
            return str(caught.value), kept

    message, kept = asyncio.run(main())
    assert "dropped 15 events" in message
    assert kept == [0, 1, 2, 3, 4]


def test_subscription_ends_when_the_publisher_stops(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server, AsyncClient(bus_config, reconnect=False) as bus:
            sub = bus.subscribe()
            await bus.fire("last/one", {})
            assert (await sub.next(timeout=5)).tag == "last/one"
            server.request_exit()
            await server.shutdown()
            with pytest.raises(BusClosedError):
                await sub.next(timeout=5)

    asyncio.run(main())


def test_connect_without_publisher_raises(sock_dir: Path):
    config = Config.load(env={}, overrides={"sock_dir": sock_dir})

    async def main() -> None:
        with pytest.raises(NoPublisherError, match="no publisher"):
            await AsyncClient(config).connect(timeout=0.1)

    asyncio.run(main())


def test_fire_rejects_bad_input(bus_config: Config, publisher: EmbeddedPublisher):
    async def main() -> None:
        async with AsyncClient(bus_config) as bus:
            # One answer for bad input, as from the blocking Sender: a
            # LocalProtocolError, which is also a ValueError (as in Salt).
            with pytest.raises(LocalProtocolError, match="non-empty"):
                await bus.fire("", {})
            with pytest.raises(LocalProtocolError, match="mapping"):
                await bus.fire("a/b", [1])  # type: ignore[arg-type]
            with pytest.raises(LocalProtocolError, match="non-empty str"):
                await bus.fire(7, {})  # type: ignore[arg-type]
            with pytest.raises(LocalProtocolError, match="cannot be encoded"):
                await bus.fire("a/b", {"x": object()})
            # Nothing half-sent: the bus still fires.
            assert (await bus.fire("a/ok", {}, ack=True)).seq == 1

    asyncio.run(main())


def test_fire_reconnects_after_a_publisher_restart(bus_config: Config):
    async def main() -> str:
        bus = AsyncClient(bus_config)
        try:
            async with Server(bus_config):
                await bus.fire("first/evt", {})
            async with Server(bus_config), AsyncClient(bus_config) as listener:
                sub = listener.subscribe()
                await asyncio.sleep(0.05)  # the old pull connection's EOF arrives
                await bus.fire("second/evt", {})
                return (await sub.next(timeout=5)).tag
        finally:
            await bus.close()

    assert asyncio.run(main()) == "second/evt"


def test_a_nack_raises_journal_unavailable_at_once(bus_config: Config):
    def nack(request_id: int) -> bytes:
        return encode_control(Nack(request_id, "read-only file system"), Framing.BARE)

    async def main() -> None:
        bus = AsyncClient(bus_config)  # firing only: no publish socket here
        try:
            # Raised on the answer: waiting out the timeout would raise BusTimeoutError.
            with pytest.raises(JournalUnavailableError, match="read-only file system"):
                await bus.fire("a/b", {}, timeout=30, ack=True)
            with pytest.raises(JournalUnavailableError):
                await bus.fire("a/c", {}, timeout=30, ack=True)
        finally:
            await bus.close()

    with stand_in(bus_config, nack) as standin:
        asyncio.run(main())
    assert standin.requests == [1, 2]  # one connection, kept after a Nack


def test_a_missing_ack_from_saltbus_does_not_blame_salt(bus_config: Config):
    async def main() -> str:
        bus = AsyncClient(bus_config)  # firing only: no publish socket here
        try:
            with pytest.raises(
                BusTimeoutError, match=r"no acknowledgement within 0\.2 s"
            ) as caught:
                await bus.fire("a/b", {}, timeout=0.2, ack=True)
        finally:
            await bus.close()
        return str(caught.value)

    with saltbus_lock(bus_config.lock_path), stand_in(bus_config, lambda _id: b""):
        assert "Salt publisher" not in asyncio.run(main())


def test_a_missing_ack_from_salt_says_salt_never_acknowledges(bus_config: Config):
    async def main() -> None:
        bus = AsyncClient(bus_config)  # firing only: no publish socket here
        try:
            with pytest.raises(BusTimeoutError, match="a Salt publisher never acknowledges"):
                await bus.fire("a/b", {}, timeout=0.2, ack=True)
        finally:
            await bus.close()

    with stand_in(bus_config, lambda _id: b""):
        asyncio.run(main())

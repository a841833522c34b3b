"""The asyncio client's firing on a tcp-mode bus, which asks for the bus's secret."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from saltbus import AccessDeniedError, AsyncClient, Config, Listener
from saltbus.server import EmbeddedPublisher

WAIT = 5.0


@pytest.fixture
def tcp_bus(bus_config: Config) -> Iterator[Config]:
    """A tcp-mode bus on ephemeral loopback ports, with its secret; yields the
    settings a client uses (the ports the publisher bound)."""
    config = bus_config.replace(ipc_mode="tcp", tcp_master_pub_port=0, tcp_master_pull_port=0)
    with EmbeddedPublisher(config) as bus:
        pub, pull = bus.pub_address, bus.pull_address
        assert isinstance(pub, tuple) and isinstance(pull, tuple)
        client = config.replace(tcp_master_pub_port=pub[1], tcp_master_pull_port=pull[1])
        assert client.secret_path.exists()
        yield client


def test_fire_reaches_listeners(tcp_bus: Config):
    async def main() -> None:
        async with AsyncClient(tcp_bus) as bus:
            for n in range(3):
                await bus.fire("tcp/evt", {"n": n})

    with Listener(tcp_bus, "tcp/") as listener:
        asyncio.run(main())
        got = [listener.receive(timeout=WAIT) for _ in range(3)]
    assert [e.data["n"] if e else None for e in got] == [0, 1, 2]


def test_acked_fire_returns_the_seq(tcp_bus: Config):
    async def main() -> list[int | None]:
        async with AsyncClient(tcp_bus) as bus:
            return [(await bus.fire("tcp/ack", {"n": n}, ack=True)).seq for n in range(3)]

    assert asyncio.run(main()) == [1, 2, 3]


def test_wrong_secret_raises_instead_of_losing_the_event(tcp_bus: Config):
    tcp_bus.secret_path.write_text("not-the-secret\n")

    async def main() -> None:
        async with AsyncClient(tcp_bus, reconnect=False) as bus:
            with pytest.raises(AccessDeniedError, match="wrong secret"):
                await bus.fire("tcp/evt", {}, timeout=WAIT)

    asyncio.run(main())

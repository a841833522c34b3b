"""The asyncio client's firing on a tcp-mode bus, which asks for the bus's
secret, and once each what is built on it: the HTTP bridge's POST /events and
the reactor's event.send (federation imports: tests/test_cluster_tcp.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from saltbus import AccessDeniedError, AsyncClient, Config, Listener
from saltbus.http import TokenStore, create_app
from saltbus.reactor import Reactor, load_rules
from saltbus.server import EmbeddedPublisher
from tests.http_support import bearer, in_process, make_tokens

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


# -- what is built on AsyncClient, once each in tcp mode ------------------------------


def test_http_post_events_fires_on_a_tcp_bus(tcp_bus: Config, tmp_path: Path):
    secrets = make_tokens(tmp_path / "tokens.json", app=(["app/*"], ["app/*"]))
    tokens = TokenStore.open(tmp_path / "tokens.json")

    async def main() -> httpx.Response:
        async with in_process(create_app(tcp_bus, tokens=tokens)) as client:
            return await client.post(
                "/events",
                json={"tag": "app/deploy", "data": {"v": 2}},
                headers=bearer(secrets["app"]),
            )

    with Listener(tcp_bus, "app/") as listener:
        listener.connect(WAIT)
        answer = asyncio.run(main())
        event = listener.receive(WAIT)
    assert answer.status_code == 200, answer.text
    assert event is not None and event.tag == "app/deploy" and event.data["v"] == 2
    assert answer.json()["seq"] == event.seq


def test_reactor_event_send_fires_on_a_tcp_bus(tcp_bus: Config, tmp_path: Path):
    (tmp_path / "r.sls").write_text("ok:\n  event.send:\n    - tag: done/{{ data.n }}\n")
    config = tcp_bus.replace(reactor=[{"e/*": [str(tmp_path / "r.sls")]}])

    async def main() -> None:
        reactor = Reactor(config, load_rules(config))
        await reactor.start()
        try:
            async with AsyncClient(config) as bus:
                done = bus.subscribe("done/")
                await bus.fire("e/x", {"n": 7}, ack=True)
                assert (await done.next(timeout=WAIT)).tag == "done/7"
        finally:
            await reactor.stop()

    asyncio.run(main())

"""The bridge in-process (Server and Bridge in one loop, as `saltbus serve`
runs them): a backlog larger than its local queue, imports handed straight
to the daemon's intake, an event NATS refuses, and what it needs from the bus."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg

import saltbus.cluster.exporter as exporter_module
from saltbus import Config, Sender
from saltbus.cluster import Bridge
from saltbus.cluster.envelope import Envelope
from saltbus.cluster.importer import Importer
from saltbus.errors import ConfigError
from saltbus.journal.store import Journal
from saltbus.server import Server
from saltbus.wire import pack_body, unpack_body
from tests.cluster_support import NatsServer, nats_servers

pytestmark = pytest.mark.timeout(300)
WAIT = 120.0


def node_config(root: Path, name: str, url: str, **cluster: Any) -> Config:
    return Config.load(
        env={},
        overrides={
            "sock_dir": root / name / "s",
            "data_dir": root / name / "d",
            "cluster": {"servers": url, "node_name": name, **cluster},
        },
    )


def imported(bridge: Bridge) -> list[tuple[str, int, dict[str, Any]]]:
    with Journal.open(bridge.journal, readonly=True) as journal:
        events = [unpack_body(r.body) for r in journal.iter_read()]
    return [
        (data["_saltbus_origin"]["node"], data["_saltbus_origin"]["seq"], data)
        for _tag, data in events
        if "_saltbus_origin" in data
    ]


async def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def fire(config: Config, count: int, tag: str = "backlog/x", size: int = 0) -> list[int]:
    with Sender(config) as sender:
        return [
            sender.fire(tag, {"n": n, "pad": "x" * size}, timeout=10.0, ack=True).seq or 0
            for n in range(count)
        ]


def test_a_backlog_larger_than_the_local_queue_is_exported_whole_in_order(
    root: Path,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    monkeypatch.setattr(exporter_module, "LOCAL_QUEUE", 100)
    a_config = node_config(root, "a", nats_server.url, max_in_flight=64)
    b_config = node_config(root, "b", nats_server.url)

    async def main() -> None:
        async with Server(a_config), Server(b_config), Bridge(b_config) as b:
            async with Bridge(a_config) as a:
                await a.wait_ready(WAIT)
                await b.wait_ready(WAIT)
            # a's bridge is away while its bus takes 3,000 events.
            fired = await asyncio.to_thread(fire, a_config, 3000)
            with caplog.at_level(logging.INFO, "saltbus.cluster"):
                async with Bridge(a_config) as a:
                    await until(lambda: len(imported(b)) >= 3000, "b to have 3,000")
                    await asyncio.sleep(1.0)
                    assert a.stats()["export"]["exported"] == 3000
            got = imported(b)
            assert [seq for _, seq, _ in got] == fired
            assert [data["n"] for _, _, data in got] == list(range(3000))
            assert "export fell behind the local bus" in caplog.text

    asyncio.run(main())


def test_given_the_daemons_intake_imports_go_straight_to_it_with_their_seqs(
    root: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
):
    a_config = node_config(root, "a", nats_server.url)
    b_config = node_config(root, "b", nats_server.url)

    async def through_the_client(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an import went through the client, not the intake")

    async def main() -> None:
        async with (
            Server(a_config),
            Server(b_config) as b_server,
            Bridge(a_config) as a,
            Bridge(b_config, intake=b_server.intake) as b,
        ):
            monkeypatch.setattr(b.importer.client, "fire", through_the_client)
            await a.wait_ready(WAIT)
            await b.wait_ready(WAIT)
            fired = await asyncio.to_thread(fire, a_config, 1500, "direct/x")
            await until(lambda: b.importer.imported >= 1500, "b to import 1,500")
            await asyncio.sleep(0.5)
            got = imported(b)
            assert [seq for _, seq, _ in got] == fired
            assert [data["n"] for _, _, data in got] == list(range(1500))
            assert all("_stamp" in data for _, _, data in got)
            # What the intake answered is what the state records: the
            # last origin seq, as of the local seq it was journaled at.
            epoch = got[-1][2]["_saltbus_origin"]["epoch"]
            assert b.importer.state.delivered(("a", epoch)) == fired[-1]
            assert b.importer.state.as_of == b_server.intake.last_seq
            assert b.stats()["import"]["imported"] == 1500

    asyncio.run(main())


def test_an_event_nats_refuses_is_counted_and_the_rest_goes_on(root: Path):
    with nats_servers(root, 1, max_payload=4096) as (server,):
        a_config = node_config(root, "a", server.url)
        b_config = node_config(root, "b", server.url)

        async def main() -> None:
            async with (
                Server(a_config),
                Server(b_config),
                Bridge(a_config) as a,
                Bridge(b_config) as b,
            ):
                await a.wait_ready(WAIT)
                await b.wait_ready(WAIT)
                small = await asyncio.to_thread(fire, a_config, 2, "size/small")
                big = await asyncio.to_thread(fire, a_config, 1, "size/big", 10_000)
                after = await asyncio.to_thread(fire, a_config, 2, "size/after")
                await until(lambda: len(imported(b)) >= 4, "b to have 4")
                assert [seq for _, seq, _ in imported(b)] == small + after
                stats = a.stats()["export"]
                assert (stats["exported"], stats["dropped"]) == (4, 1)
                assert stats["position"] >= max(big + after)

        asyncio.run(main())


def test_federation_needs_the_journal(root: Path):
    config = node_config(root, "a", "nats://127.0.0.1:1").replace(journal="none")
    with pytest.raises(ConfigError, match="needs the journal"):
        Bridge(config)


def test_the_bus_keeps_working_while_nats_was_never_there(root: Path):
    # A port nothing listens on: the bridge keeps trying, the bus is unaffected,
    # and stop() returns promptly.
    config = node_config(root, "a", "nats://127.0.0.1:9")

    async def main() -> None:
        async with Server(config) as server:
            bridge = Bridge(config)
            await bridge.start()
            server.stats_sources["cluster"] = bridge.stats
            seqs = await asyncio.to_thread(fire, config, 5)
            assert seqs == [1, 2, 3, 4, 5]
            await asyncio.sleep(2.5)  # one stats refresh
            stats = server.stats()["cluster"]
            assert stats["state"] == "connecting" and stats["connected"] is None
            assert stats["waiting_for"] == "a connection to NATS"
            assert stats["export"]["lag"] == 5
            assert "cannot connect to NATS" in (stats["last_error"] or "")
            started = time.monotonic()
            await bridge.stop()
            assert time.monotonic() - started < 5.0

    asyncio.run(main())


class FakeClient:
    """What a NATS message acknowledges through."""

    def __init__(self) -> None:
        self.acks: list[str] = []

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.acks.append(subject)


class FakeSubscription:
    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches = batches

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout)
        raise nats.errors.TimeoutError

    async def unsubscribe(self) -> None:
        pass


class FakeLink:
    """Hands out prepared subscriptions, as Link.bind_consumer would."""

    connected = True

    def __init__(self, subscriptions: list[tuple[FakeSubscription, int]]) -> None:
        self.subscriptions = subscriptions
        self.binds = 0

    async def wait_up(self) -> None:
        pass

    async def bind_consumer(
        self, filter_subject: str, resume_at: int | None = None
    ) -> tuple[FakeSubscription, int]:
        self.binds += 1
        return self.subscriptions.pop(0)

    def stream_failed(self) -> None:
        pass


def message(client: FakeClient, stream_seq: int, delivery: int, origin_seq: int) -> Msg:
    envelope = Envelope("a", 7, origin_seq, "gap/x")
    return Msg(
        client,  # type: ignore[arg-type]
        subject="saltbus.ev.gap.x",
        reply=f"$JS.ACK.SALTBUS.b.1.{stream_seq}.{delivery}.{time.time_ns()}.0",
        data=pack_body("gap/x", {"n": origin_seq}),
        headers=envelope.headers(),
    )


def test_a_delivery_lost_on_the_way_is_delivered_again_before_what_follows(root: Path):
    # Stream seqs 1..5 (origin seqs 11..15); deliveries 3 and 4 never arrive
    # (a NATS server died with them): the importer stops at the gap, has the
    # consumer rewound, and gets 3, 4, 5 again, in order.
    config = node_config(root, "b", "nats://127.0.0.1:1")
    nats_client = FakeClient()
    first = FakeSubscription(
        [
            [message(nats_client, 1, 1, 11), message(nats_client, 2, 2, 12)],
            [message(nats_client, 5, 5, 15)],
        ]
    )
    rewound = FakeSubscription([[message(nats_client, s, s - 2, s + 10) for s in (3, 4, 5)]])
    link = FakeLink([(first, 1), (rewound, 1)])

    async def main() -> None:
        async with Server(config):
            bridge = Bridge(config)
            importer = Importer(config, bridge.settings, link, bridge.journal)  # type: ignore[arg-type]
            await importer.start()
            task = asyncio.create_task(importer.run())
            try:
                await until(lambda: importer.imported >= 5, "5 imported")
            finally:
                importer.stopping = True
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await importer.close()
            assert [seq for _, seq, _ in imported(bridge)] == [11, 12, 13, 14, 15]
            assert (importer.rewinds, link.binds) == (1, 2)
            # The message after the gap was left unacknowledged the first time.
            assert [a.split(".")[5] for a in nats_client.acks] == ["1", "2", "3", "4", "5"]

    asyncio.run(main())

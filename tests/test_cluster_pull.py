"""The import consumer's puller against a real nats-server: batches in
delivery order and capped, nothing lost between fetches, and a request that
expired on a quiet stream is made again so later messages still come."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from saltbus.cluster.pull import Puller, delivery_number, stream_number
from tests.cluster_support import NatsServer

pytestmark = pytest.mark.timeout(120)


async def consumer(url: str) -> tuple[nats.NATS, Puller]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="P", subjects=["p.>"])
    await js.add_consumer(
        "P", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=5000)
    )
    puller = Puller(nc, "P", "c")
    await puller.start()
    return nc, puller


def test_batches_come_in_delivery_order_capped_and_nothing_is_lost(nats_server: NatsServer):
    async def main() -> None:
        nc, puller = await consumer(nats_server.url)
        js = nc.jetstream()
        try:
            for n in range(250):
                await js.publish("p.x", str(n).encode())
            got: list[int] = []
            deliveries: list[int] = []
            sizes: list[int] = []
            while len(got) < 250:
                messages = await puller.fetch(100, timeout=5.0)
                sizes.append(len(messages))
                for message in messages:
                    got.append(int(message.data))
                    deliveries.append(delivery_number(message))
                    assert deliveries[-1] == message.metadata.sequence.consumer
                    await message.ack()
            assert got == list(range(250))
            assert deliveries == list(range(1, 251))
            assert max(sizes) <= 100
            with pytest.raises(TimeoutError):
                await puller.fetch(100, timeout=0.3)
        finally:
            await puller.unsubscribe()
            await nc.close()

    asyncio.run(main())


def test_a_message_after_requests_expired_on_a_quiet_stream_still_comes(
    nats_server: NatsServer,
):
    async def main() -> None:
        nc, puller = await consumer(nats_server.url)
        js = nc.jetstream()
        try:
            # Requests expire while nothing is published, between fetches...
            for _ in range(3):
                with pytest.raises(TimeoutError):
                    await puller.fetch(10, timeout=0.2)
            await js.publish("p.x", b"first")
            first = await puller.fetch(10, timeout=1.0)
            assert [m.data for m in first] == [b"first"]

            # ... and during one: the request the last fetch made (for 1 s)
            # expires while the next fetch waits; what comes after still arrives.
            async def later() -> None:
                await asyncio.sleep(2.0)
                await js.publish("p.x", b"late")

            task = asyncio.create_task(later())
            late = await puller.fetch(10, timeout=10.0)
            await task
            assert [m.data for m in late] == [b"late"]
        finally:
            await puller.unsubscribe()
            await nc.close()

    asyncio.run(main())


def test_the_delivery_and_stream_numbers_are_read_from_either_form_of_reply_subject():
    v1 = Msg(None, subject="s", reply="$JS.ACK.S.c.1.10.7.1700000000000000000.3")  # type: ignore[arg-type]
    with_domain = Msg(
        None,  # type: ignore[arg-type]
        subject="s",
        reply="$JS.ACK.hub.ACCHASH.S.c.1.10.7.1700000000000000000.3.xyz",
    )
    assert delivery_number(v1) == v1.metadata.sequence.consumer == 7
    assert delivery_number(with_domain) == with_domain.metadata.sequence.consumer == 7
    assert stream_number(v1) == v1.metadata.sequence.stream == 10
    assert stream_number(with_domain) == with_domain.metadata.sequence.stream == 10

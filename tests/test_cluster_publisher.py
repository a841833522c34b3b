"""The export's publisher against a real nats-server: each publish's future
holds JetStream's own answer to it (its stream seq, a duplicate, a refusal,
no stream at all), as nats-py's publish_async would."""

from __future__ import annotations

import asyncio

import nats
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from saltbus.cluster.publisher import Publisher
from tests.cluster_support import NatsServer

pytestmark = pytest.mark.timeout(120)


def test_each_future_holds_the_answer_to_its_own_publish(nats_server: NatsServer):
    async def main() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(
                StreamConfig(name="Q", subjects=["q.>"], max_msg_size=1000)
            )
            publisher = Publisher(nc)
            await publisher.start()
            futures = [
                await publisher.publish("q.x", f"{n}".encode(), {"Nats-Msg-Id": f"id-{n}"})
                for n in range(300)
            ]
            again = await publisher.publish("q.x", b"0", {"Nats-Msg-Id": "id-0"})
            too_big = await publisher.publish("q.x", b"x" * 2000, {"Nats-Msg-Id": "big"})
            nowhere = await publisher.publish("elsewhere.x", b"x")
            await asyncio.wait([*futures, again, too_big, nowhere], timeout=30)
            assert [f.result().seq for f in futures] == list(range(1, 301))
            assert not any(f.result().duplicate for f in futures)
            assert again.result().duplicate and again.result().seq == 1
            error = too_big.exception()
            assert isinstance(error, nats.js.errors.APIError) and error.err_code == 10054
            assert isinstance(nowhere.exception(), nats.js.errors.NoStreamResponseError)
            assert publisher.in_flight == 0
            # A publish given up on is forgotten.
            late = await publisher.publish("q.x", b"late")
            late.cancel()
            await asyncio.sleep(0)
            assert publisher.in_flight == 0
            await publisher.close()
        finally:
            await nc.close()

    asyncio.run(main())

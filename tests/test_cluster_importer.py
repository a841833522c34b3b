"""The importer on a real nats-server, fed by hand-made messages: a node
reads the one-event form (as an older node publishes it) and batches mixed
in one stream, and a backlog sent again cut into other batches (so
JetStream's Nats-Msg-Id does not find the resend) is delivered once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from saltbus import Config
from saltbus.cluster import ORIGIN_KEY, Bridge
from saltbus.cluster.envelope import Batch, Envelope
from saltbus.cluster.subjects import batch_subject, tag_to_subject
from saltbus.journal.store import Journal
from saltbus.server import Server
from saltbus.wire import pack_body, unpack_body
from tests.cluster_support import NatsServer

pytestmark = pytest.mark.timeout(300)
WAIT = 60.0
ORIGIN = ("x", 7)


def node_config(root: Path, name: str, url: str) -> Config:
    return Config.load(
        env={},
        overrides={
            "sock_dir": root / name / "s",
            "data_dir": root / name / "d",
            "cluster": {"servers": url, "node_name": name},
        },
    )


def body(seq: int) -> bytes:
    return pack_body(f"hand/{seq}", {"n": seq})


def imported(journal: Path) -> list[tuple[str, int, int]]:
    with Journal.open(journal, readonly=True) as store:
        events = [unpack_body(r.body) for r in store.iter_read()]
    return [
        (data[ORIGIN_KEY]["node"], data[ORIGIN_KEY]["seq"], data["n"])
        for _, data in events
        if ORIGIN_KEY in data
    ]


async def publish_single(js: Any, seq: int) -> None:
    headers = Envelope(*ORIGIN, seq, f"hand/{seq}").headers()
    await js.publish(tag_to_subject(f"hand/{seq}"), body(seq), headers=headers)


async def publish_batch(js: Any, seqs: list[int]) -> None:
    batch = Batch(*ORIGIN, [(seq, body(seq)) for seq in seqs])
    subject = batch_subject(tag_to_subject(f"hand/{seqs[0]}"))
    await js.publish(subject, batch.body(), headers=batch.headers())


def test_both_forms_are_read_and_a_resend_cut_differently_is_delivered_once(
    root: Path, nats_server: NatsServer
):
    config = node_config(root, "b", nats_server.url)

    async def main() -> None:
        async with Server(config) as server, Bridge(config, intake=server.intake) as bridge:
            bridge.attach(server)
            await bridge.wait_ready(WAIT)
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream(timeout=10)
            try:
                for seq in (1, 2, 3, 4):  # an older node: one event per message
                    await publish_single(js, seq)
                await publish_batch(js, [3, 4, 5, 6, 8])  # 7 was not exported: a gap
                await publish_batch(js, [6, 8, 9, 10])  # a resend, cut elsewhere
                await publish_single(js, 9)  # and one event of it alone again
                bad = Batch(*ORIGIN, [(11, body(11))])
                await js.publish(
                    batch_subject(tag_to_subject("hand/11")),
                    bad.body()[:-2],  # cut short: refused, not a stall
                    headers={**bad.headers(), "Nats-Msg-Id": "x:7:bad"},
                )
                await publish_single(js, 12)
            finally:
                await nc.close()
            deadline = time.monotonic() + WAIT
            while not any(seq == 12 for _, seq, _ in imported(bridge.journal)):
                assert time.monotonic() < deadline, "timed out waiting for seq 12"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # time for anything extra to arrive
            assert imported(bridge.journal) == [
                ("x", seq, seq) for seq in (1, 2, 3, 4, 5, 6, 8, 9, 10, 12)
            ]
            stats = bridge.stats()["import"]
            assert stats["imported"] == 10
            assert stats["duplicates"] == 2 + 2 + 1  # 3, 4; 6, 8; 9
            assert stats["rejected"] == 1

    asyncio.run(main())

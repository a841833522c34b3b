"""The export in the daemon's process (Server and Bridge in one loop, wired
as `saltbus serve` wires them): it reads the journal, publishes only what its
patterns select, decodes no body (an imported event is known by its marker,
first in its data), and never sends an imported event back out; a backlog
goes out in batches of at most ``export_batch`` events (with 1, one event per
message)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest

import saltbus.cluster.exporter as exporter_module
from saltbus import Config, Sender
from saltbus.cluster import ORIGIN_KEY, Bridge
from saltbus.cluster.envelope import BATCH, Envelope, batch_size, unpack_batch
from saltbus.cluster.subjects import batch_subject, tag_to_subject
from saltbus.journal.store import Journal
from saltbus.server import Server
from saltbus.wire import unpack_body
from tests.cluster_support import NatsServer

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


def fire(config: Config, tags: list[str]) -> list[int]:
    with Sender(config) as sender:
        return [
            sender.fire(tag, {"n": n}, timeout=10.0, ack=True).seq or 0
            for n, tag in enumerate(tags)
        ]


def imported(journal: Path) -> list[tuple[str, int]]:
    with Journal.open(journal, readonly=True) as store:
        events = [unpack_body(r.body) for r in store.iter_read()]
    return [(tag, data[ORIGIN_KEY]["seq"]) for tag, data in events if ORIGIN_KEY in data]


async def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_in_process_export_sends_what_it_selects_in_order_and_decodes_nothing(
    root: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
):
    decoded: list[dict[str, Any]] = []

    def unpack_and_note(body: bytes) -> tuple[str, dict[str, Any]]:
        tag, data = unpack_body(body)
        decoded.append(data)
        return tag, data

    monkeypatch.setattr(exporter_module, "unpack_body", unpack_and_note)
    a_config = node_config(root, "a", nats_server.url, export=["keep/"], max_in_flight=50)
    b_config = node_config(root, "b", nats_server.url)
    tags = [f"keep/{n}" if n % 3 else f"other/{n}" for n in range(600)]

    async def main() -> None:
        async with (
            Server(a_config) as a_server,
            Server(b_config) as b_server,
            Bridge(a_config, intake=a_server.intake) as a,
            Bridge(b_config, intake=b_server.intake) as b,
        ):
            a.attach(a_server)
            b.attach(b_server)
            await a.wait_ready(WAIT)
            await b.wait_ready(WAIT)
            seqs = await asyncio.to_thread(fire, a_config, tags)
            kept = [(t, s) for t, s in zip(tags, seqs, strict=True) if t.startswith("keep/")]
            await until(lambda: a.exporter.position == seqs[-1], "a to pass its last event")
            await until(lambda: b.importer.imported >= len(kept), "b to import")
            await until(
                lambda: b.exporter.position == b_server.intake.last_seq,
                "b to pass what it imported",
            )
            assert imported(b.journal) == kept  # each once, in order
            export_a, export_b = a.stats()["export"], b.stats()["export"]
            assert (export_a["exported"], export_a["not_exported"]) == (
                len(kept),
                len(tags) - len(kept),
            )
            # b's imports never go back out, and nothing was published for them.
            assert (export_b["exported"], export_b["not_exported"]) == (0, len(kept))
            assert a.importer.imported == 0
            # Nothing was decoded: b knew its imports by the marker's place.
            assert decoded == []

    asyncio.run(main())


async def stream_messages(url: str) -> list[tuple[dict[str, str], bytes]]:
    """Every message of the stream, read by a consumer of its own."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        last = (await js.stream_info("SALTBUS")).state.last_seq
        reader = await js.pull_subscribe("saltbus.ev.>", "reader", stream="SALTBUS")
        got: list[tuple[dict[str, str], bytes]] = []
        while not got or got[-1][0].get("_seq") != str(last):
            for message in await reader.fetch(100, timeout=10):
                headers = dict(message.headers or {})
                headers["_seq"] = str(message.metadata.sequence.stream)
                got.append((headers, message.data))
                await message.ack()
        return got
    finally:
        await nc.close()


@pytest.mark.parametrize("export_batch", [1, 50])
def test_a_backlog_goes_out_in_batches_of_export_batch_or_one_per_message(
    root: Path, nats_server: NatsServer, export_batch: int
):
    a_config = node_config(root, "a", nats_server.url, export_batch=export_batch)
    tags = [f"backlog/{n % 3}" for n in range(300)]

    async def main() -> None:
        async with Server(a_config) as a_server:
            async with Bridge(a_config, intake=a_server.intake) as a:
                a.attach(a_server)
                await a.wait_ready(WAIT)  # the export's position is kept from here
            a_server.commit_listeners.clear()
            seqs = await asyncio.to_thread(fire, a_config, tags)  # a backlog: NATS unlinked
            async with Bridge(a_config, intake=a_server.intake) as a:
                a.attach(a_server)
                await until(lambda: a.exporter.position == seqs[-1], "a to export its backlog")
                assert a.stats()["export"]["exported"] == len(tags)
        messages = await stream_messages(nats_server.url)
        events: list[tuple[int, str]] = []
        for headers, payload in messages:
            envelope = Envelope.from_headers(headers)
            count = batch_size(headers)
            if count is None:
                events.append((envelope.seq, unpack_body(payload)[0]))
            else:
                assert count <= export_batch
                events += [
                    (s, unpack_body(b)[0]) for s, b in unpack_batch(envelope, count, payload)
                ]
        assert events == list(zip(seqs, tags, strict=True))  # each once, in order
        if export_batch == 1:
            assert len(messages) == len(tags)
            assert all(BATCH not in headers for headers, _ in messages)
        else:
            assert len(messages) < len(tags) // 10

    asyncio.run(main())


async def stream_subjects(url: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of the stream with its subject, read by a consumer of its own."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        last = (await js.stream_info("SALTBUS")).state.last_seq
        reader = await js.pull_subscribe("saltbus.ev.>", "subjects", stream="SALTBUS")
        got: list[tuple[str, dict[str, str], bytes]] = []
        seq = 0
        while seq != last:
            for message in await reader.fetch(100, timeout=10):
                got.append((message.subject, dict(message.headers or {}), message.data))
                seq = message.metadata.sequence.stream
                await message.ack()
        return got
    finally:
        await nc.close()


def test_a_batch_holds_only_events_whose_subjects_differ_in_the_last_token(
    root: Path, nats_server: NatsServer
):
    # Parents that differ only in escaping, depth or a leading "/", and tags
    # long enough for their subject to be cut: none of them may share a batch
    # with the others unless their subjects say so.
    long_tag = "long/" + "\u00e9" * 400 + "/x"
    parents = ["x", "/y", "a/b/c", "a/b/d", "a/c/d", "a.b/c", "a%2Eb/c", long_tag, "long/z"]
    tags = [tag for tag in parents for _ in range(4)] * 3
    a_config = node_config(root, "a", nats_server.url)

    async def main() -> None:
        async with Server(a_config) as a_server:
            async with Bridge(a_config, intake=a_server.intake) as a:
                a.attach(a_server)
                await a.wait_ready(WAIT)
            a_server.commit_listeners.clear()
            seqs = await asyncio.to_thread(fire, a_config, tags)  # a backlog: NATS unlinked
            async with Bridge(a_config, intake=a_server.intake) as a:
                a.attach(a_server)
                await until(lambda: a.exporter.position == seqs[-1], "a to export its backlog")
        events: list[tuple[int, str]] = []
        batches = 0
        for subject, headers, payload in await stream_subjects(nats_server.url):
            envelope = Envelope.from_headers(headers)
            count = batch_size(headers)
            if count is None:
                events.append((envelope.seq, unpack_body(payload)[0]))
                continue
            batches += 1
            assert subject == batch_subject(subject)
            for seq, body in unpack_batch(envelope, count, payload):
                tag = unpack_body(body)[0]
                assert batch_subject(tag_to_subject(tag)) == subject, (tag, subject)
                events.append((seq, tag))
        assert events == list(zip(seqs, tags, strict=True))  # each once, in order
        assert batches > 0

    asyncio.run(main())

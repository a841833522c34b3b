"""The node's stream and consumer on a real nats-server: the configured
retention reaches a stream that exists already, its size and limits are in
`saltbus stats`, ``import_start`` picks where a new node's consumer begins
(only a new node's: a lost consumer goes on after what was handled, also one
deleted while the node runs), and a
full journal with NATS restarted meanwhile loses and duplicates no import."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType

from tests.cluster_support import NatsServer, Node, running, wait_imported
from tests.disk_support import PAD, fill, small_disk
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(600)


async def _stream_limits(url: str, create: bool = False) -> tuple[float, int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=5)
        if create:
            await js.add_stream(
                name="SALTBUS", subjects=["saltbus.>"], storage=StorageType.FILE, max_age=86400
            )
        config = (await js.stream_info("SALTBUS")).config
        return config.max_age or 0.0, config.max_bytes or -1
    finally:
        await nc.close()


def test_an_existing_stream_takes_the_configured_retention_and_stats_show_it(
    root: Path, nats_server: NatsServer
):
    url = nats_server.url
    assert asyncio.run(_stream_limits(url, create=True)) == (86400.0, -1)
    a = Node(root, "a", [url], max_age="2h", max_bytes=10_000_000)
    with running([a]):
        assert asyncio.run(_stream_limits(url)) == (7200.0, 10_000_000)
        a.fire("retained/x", {"n": 1})

        def shown() -> bool:
            stream = a.stats()["cluster"]["stream_state"]
            return bool(stream) and stream["messages"] >= 1

        wait_until(shown, "the stream's state in stats", 30)
        stream = a.stats()["cluster"]["stream_state"]
        assert (stream["max_age"], stream["max_bytes"]) == (7200.0, 10_000_000)
        assert stream["bytes"] > 0 and stream["last_seq"] >= 1
        consumer = a.stats()["cluster"]["import"]["consumer"]
        assert consumer["pending"] == 0
        assert a.stats()["cluster"]["export"]["lag"] == 0
    # Changed again in the configuration: applied at the next start.
    b = Node(root, "b", [url], max_age=3600, max_bytes=-1)
    with running([b]):
        assert asyncio.run(_stream_limits(url)) == (3600.0, -1)


def test_import_start_new_all_and_since_choose_a_new_nodes_first_event(
    root: Path, nats_server: NatsServer
):
    url = [nats_server.url]
    a = Node(root, "a", url)
    with running([a]):
        early = [a.fire("hist/early", {"n": n}) for n in range(3)]
        time.sleep(1.0)  # NATS stamps messages to the nanosecond; a clear boundary
        boundary = datetime.now(UTC).isoformat()
        time.sleep(1.0)
        late = [a.fire("hist/late", {"n": n}) for n in range(2)]
        wait_until(lambda: a.stats()["cluster"]["export"]["lag"] == 0, "a exported all", 30)
        everything = Node(root, "all", url, import_start="all")
        since = Node(root, "since", url, import_start=f"since {boundary}")
        new = Node(root, "new", url)
        with running([everything, since, new]):
            wait_until(lambda: len(everything.imported()) >= 5, "the history on 'all'", 60)
            wait_until(lambda: len(since.imported()) >= 2, "the late events on 'since'", 60)
            after = a.fire("hist/after", {"n": 0})
            for node in (everything, since, new):
                wait_until(lambda node=node: _has(node, after), f"the new event on {node.name}", 60)
            time.sleep(1.0)  # time for anything extra to arrive
            assert [s for _, s, _, _ in everything.imported()] == [*early, *late, after]
            assert [s for _, s, _, _ in since.imported()] == [*late, after]
            assert [s for _, s, _, _ in new.imported()] == [after]
            assert new.stats()["cluster"]["import"]["start"] == "new"


def _has(node: Node, origin_seq: int) -> bool:
    return any(seq == origin_seq for _, seq, _, _ in node.imported())


async def _delete_consumer(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream(timeout=5).delete_consumer("SALTBUS", name)
    finally:
        await nc.close()


def test_a_node_whose_consumer_is_gone_goes_on_after_what_it_imported(
    root: Path, nats_server: NatsServer
):
    # A rewind deletes the consumer and makes it again; when the second step
    # fails (NATS lost its leader in between, as in the soak), the next bind
    # finds no consumer. import_start is for a node's first start only: this
    # node must go on after the last event it handled, not from the stream's end.
    url = [nats_server.url]
    a, b = Node(root, "a", url), Node(root, "b", url)
    with running([a, b]):
        fired = [b.fire("gone/before", {"n": n}) for n in range(3)]
        wait_imported(a, 3)
        a.stop()
        asyncio.run(_delete_consumer(nats_server.url, "a"))
        fired += [b.fire("gone/while", {"n": n}) for n in range(5)]
        wait_until(lambda: b.stats()["cluster"]["export"]["lag"] == 0, "b exported all", 30)
        a.start()
        fired.append(b.fire("gone/after", {"n": 0}))
        wait_until(lambda: _has(a, fired[-1]), "the last event on a", 60)
        time.sleep(1.0)  # time for anything extra to arrive
        assert [s for node, s, _, _ in a.imported() if node == "b"] == fired
        assert a.stats()["cluster"]["import"]["start"] == "new"


def test_a_consumer_deleted_under_a_running_node_is_made_again_after_what_it_imported(
    root: Path, nats_server: NatsServer
):
    # NATS answers the outstanding pull request with 409 Consumer Deleted and
    # any later one with 503: the importer must bind again, not wait forever.
    url = [nats_server.url]
    a, b = Node(root, "a", url), Node(root, "b", url)
    with running([a, b]):
        fired = [b.fire("deleted/before", {"n": n}) for n in range(3)]
        wait_imported(a, 3)
        for round_ in range(2):  # the second time, on the consumer made again
            asyncio.run(_delete_consumer(nats_server.url, "a"))
            fired += [b.fire("deleted/after", {"n": n, "round": round_}) for n in range(20)]

            def arrived(last: int = fired[-1]) -> bool:
                return _has(a, last)

            wait_until(arrived, "the last event on a", 60)
        time.sleep(1.0)  # time for anything extra to arrive
        assert [s for node, s, _, _ in a.imported() if node == "b"] == fired
        assert "the consumer is gone" in a.log()


def test_a_full_journal_and_a_nats_restart_lose_and_duplicate_no_import(
    root: Path, nats_server: NatsServer
):
    # The soak's other faults around the loss: node a's journal disk full
    # (imports refused, fired again) and NATS gone meanwhile (redeliveries).
    url = [nats_server.url]
    a, b = Node(root, "a", url), Node(root, "b", url)
    with small_disk(a.dir, 4) as disk:
        (a.dir / "d").symlink_to(disk)
        with running([a, b]):
            fired = [b.fire("full/before", {"n": n}) for n in range(3)]
            wait_imported(a, 3)
            filler = fill(disk, 64 * 1024)
            fired += [b.fire("full/during", {"n": n, "pad": PAD}) for n in range(150)]
            nats_server.stop()
            nats_server.start()
            fired += [b.fire("full/during", {"n": n, "pad": PAD}) for n in range(150, 300)]
            filler.unlink()
            fired.append(b.fire("full/after", {"n": 0}))
            wait_until(lambda: _has(a, fired[-1]), "the last event on a", 120)
            time.sleep(1.0)  # time for anything extra to arrive
            assert [s for node, s, _, _ in a.imported() if node == "b"] == fired
            log = (a.dir / "log").read_text(errors="replace")
            assert "journal cannot commit" in log  # the faults did happen
            assert "import: the local journal refused" in log
            assert "reconnected to NATS" in log

"""A three-node NATS cluster, the stream on all three (replicas 3), and the
stream's leader killed with SIGKILL while 3,000 events are being fired across
three buses: each bus still gets every other bus's events once, in order."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster_support import (
    NatsServer,
    Node,
    running,
    stream_leader,
    wait_imported,
)

pytestmark = pytest.mark.timeout(900)

PER_NODE = 1000


def test_killing_the_stream_leader_loses_and_duplicates_nothing(
    root: Path, nats_cluster: list[NatsServer]
):
    urls = [s.url for s in nats_cluster]
    nodes = [
        # Each node lists every server, its "own" first.
        Node(root, name, urls[i:] + urls[:i], replicas=3)
        for i, name in enumerate(("a", "b", "c"))
    ]
    with running(nodes):
        leader_name = asyncio.run(stream_leader(urls))
        leader = next(s for s in nats_cluster if s.name == leader_name)
        fired: dict[str, list[int]] = {node.name: [] for node in nodes}
        total = threading.Semaphore(0)
        errors: list[BaseException] = []

        def fire_all(node: Node) -> None:
            try:
                for n in range(PER_NODE):
                    fired[node.name].append(node.fire(f"load/{node.name}", {"n": n}))
                    total.release()
            except BaseException as exc:
                errors.append(exc)
                raise

        threads = [threading.Thread(target=fire_all, args=(node,)) for node in nodes]
        for thread in threads:
            thread.start()
        for _ in range(PER_NODE):  # a third of the events fired: kill the leader
            assert total.acquire(timeout=120), errors
        leader.kill()
        for thread in threads:
            thread.join(300)
        assert not errors, errors
        assert all(len(seqs) == PER_NODE for seqs in fired.values())
        # The stream lives on the two servers left.
        survivors = [s.url for s in nats_cluster if s is not leader]
        assert asyncio.run(stream_leader(survivors)) != leader_name

        for node in nodes:
            wait_imported(node, 2 * PER_NODE, timeout=400)
        for node in nodes:
            imported = node.imported()
            counts = Counter((origin, seq) for origin, seq, _, _ in imported)
            assert len(imported) == 2 * PER_NODE, f"{node.name}: {len(imported)} events"
            assert max(counts.values()) == 1, f"{node.name}: duplicates"
            for origin, seqs_fired in fired.items():
                if origin == node.name:
                    continue
                # All of them, each once, in the order they were fired there.
                seqs = [seq for o, seq, _, _ in imported if o == origin]
                numbers = [data["n"] for o, _, _, data in imported if o == origin]
                assert seqs == seqs_fired, f"{origin} -> {node.name}"
                assert numbers == list(range(PER_NODE))
            # What the failover cost, for the curious (pytest -s).
            print(node.name, node.stats()["cluster"], node.log()[-1500:], sep="\n")

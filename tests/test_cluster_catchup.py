"""Coming back: a bus that was stopped catches up on what the others fired
meanwhile (in order, exactly once, also when killed halfway through), and a
bus cut off from NATS exports what it took meanwhile once NATS returns."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster_support import (
    POLL,
    Node,
    nats_servers,
    running,
    wait_imported,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(900)


def assert_in_order_once(node: Node, origin: str, fired: list[int]) -> None:
    seqs = [seq for o, seq, _, _ in node.imported() if o == origin]
    duplicates = [seq for seq, count in Counter(seqs).items() if count > 1]
    assert not duplicates, f"{origin} -> {node.name}: {len(duplicates)} duplicated"
    missing = sorted(set(fired) - set(seqs))
    assert not missing, f"{origin} -> {node.name}: {len(missing)} missing, first {missing[:5]}"
    assert seqs == fired, f"{origin} -> {node.name}: out of order"


def test_a_stopped_node_delivers_what_it_missed_in_order_exactly_once(root: Path):
    with nats_servers(root, 1) as (server,):
        a, b, c = (Node(root, name, [server.url]) for name in "abc")
        with running([a, b, c]):
            fired: dict[str, list[int]] = {"a": [], "b": []}
            for n in range(10):  # before: c is there
                fired["a"].append(a.fire("before/a", {"n": n}))
            wait_imported(c, 10)
            c.stop()

            for n in range(500):
                fired["a"].append(a.fire("missed/a", {"n": n}))
                fired["b"].append(b.fire("missed/b", {"n": n}))

            # Back, then killed halfway through its catching up, then back again.
            c.start()
            wait_until(lambda: len(c.imported()) >= 10 + 300, "c to catch up partly", 120, POLL)
            c.kill()
            partly = len(c.imported())
            c.start()
            wait_imported(c, 10 + 1000)

            assert_in_order_once(c, "a", fired["a"])
            assert_in_order_once(c, "b", fired["b"])
            assert len(c.imported()) == 1010
            stats = c.stats()["cluster"]["import"]
            # What the killed run had fired and not acknowledged came again, and was dropped.
            assert stats["imported"] == 1010 - partly
            print(f"killed after {partly - 10} of 1000; stats after the restart: {stats}")


def test_a_node_cut_off_from_nats_exports_what_it_took_meanwhile(root: Path):
    with nats_servers(root, 3, advertise=False) as servers:
        # Each node talks to its own NATS server only: stopping n1 cuts off a alone.
        a, b, c = (
            Node(root, name, [server.url], replicas=3)
            for name, server in zip("abc", servers, strict=True)
        )
        with running([a, b, c]):
            fired_a = [a.fire("early/a", {"n": n}) for n in range(5)]
            wait_imported(b, 5)
            servers[0].stop()
            wait_until(lambda: a.stats()["cluster"]["state"] != "linked", "a to notice", 30, POLL)

            # The local bus takes events as before; the other nodes go on too.
            fired_a += [a.fire("offline/a", {"n": n}) for n in range(500)]
            fired_b = [b.fire("online/b", {"n": n}) for n in range(100)]
            wait_imported(c, 5 + 100)
            time.sleep(2.0)
            assert a.stats()["cluster"]["export"]["lag"] >= 500
            # The journal keeps what the export has not sent, however old it gets.
            assert a.stats()["journal_holds"]["cluster:export"] < fired_a[5]
            assert len(b.imported()) == 5

            servers[0].start()  # same port, same store
            a.wait_linked()
            for node in (b, c):
                wait_imported(node, len(fired_a) + (100 if node is c else 0))
                assert_in_order_once(node, "a", fired_a)
            wait_imported(a, 100)
            assert_in_order_once(a, "b", fired_b)
            wait_until(
                lambda: a.stats()["cluster"]["export"]["lag"] == 0, "no export lag", 30, POLL
            )
            assert a.stats()["journal_holds"]["cluster:export"] >= fired_a[-1]

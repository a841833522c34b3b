"""A node killed (-9) and started again right after NATS servers were (one
of them, then the stream's leader, as in the soak where one such restart
did not link within 60 s): it links again soon after JetStream has a
stream leader, `saltbus stats` says what it waits for meanwhile, and its
imports stay exactly once and in order."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from saltbus.errors import SaltbusError
from tests.cluster_support import NatsServer, Node, running, stream_leader
from tests.test_cluster_catchup import assert_in_order_once
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(600)

# From the moment JetStream has a stream leader again: the node's own retries
# (a JetStream request times out after 5 s, a retry waits 5 s at most) with
# room for a loaded machine; the soak gave up after 60 s.
RELINK_BOUND = 30.0


def _state(node: Node) -> tuple[str, str | None]:
    try:
        cluster = node.stats()["cluster"]
    except (SaltbusError, KeyError):
        return "starting", None
    return str(cluster["state"]), cluster.get("waiting_for")


def test_a_node_restarted_after_nats_restarts_links_again_soon(
    root: Path, nats_cluster: list[NatsServer]
):
    urls = [s.url for s in nats_cluster]
    by_name = {s.name: s for s in nats_cluster}
    a, b = (Node(root, name, urls, replicas=3) for name in "ab")
    with running([a, b]):
        fired: list[int] = []
        stop = threading.Event()

        def fire_on_b() -> None:
            # Acknowledged fires, so a's consumer has deliveries pending at its kill.
            n = 0
            while not stop.is_set():
                fired.append(b.fire("relink/b", {"n": n}))
                n += 1
                time.sleep(0.01)

        firing = threading.Thread(target=fire_on_b)
        firing.start()
        try:
            wait_until(lambda: len(a.imported()) >= 20, "a importing b's events", 60)
            leader = asyncio.run(stream_leader(urls))
            other = next(s for s in nats_cluster if s.name != leader)
            other.kill()
            time.sleep(2.5)
            other.start()
            time.sleep(3.0)
            leader = asyncio.run(stream_leader(urls))
            by_name[leader].kill()
            time.sleep(2.0)
            by_name[leader].start()
            a.kill()
            time.sleep(2.0)
            a.start(linked=False)
            asyncio.run(stream_leader(urls))  # JetStream answers again
            seen: list[tuple[str, str | None]] = []

            def linked() -> bool:
                state = _state(a)
                if not seen or seen[-1] != state:
                    seen.append(state)
                return state[0] == "linked"

            try:
                wait_until(linked, "node a to link again", RELINK_BOUND, 0.1)
            except AssertionError:
                raise AssertionError(f"a not linked; seen {seen}\n{a.log()}") from None
            # While it was not linked, stats said what for; linked, nothing.
            assert all(waiting for state, waiting in seen if state == "connecting"), seen
            assert seen[-1] == ("linked", None)
        finally:
            stop.set()
            firing.join(60)
        wait_until(lambda: len(a.imported()) >= len(fired), "a importing all of b's", 180)
        time.sleep(1.5)  # anything extra arrives meanwhile
        assert_in_order_once(a, "b", fired)

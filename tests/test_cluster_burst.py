"""A burst of 10,000 events on one of three federated buses (a Salt job's
returns from 10,000 minions): each reaches both other buses exactly once, in
the order it was fired, and how long after the last fire it landed is printed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from saltbus import Config, Listener, Sender
from tests.cluster_support import NatsServer, Node, running
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(600)

BURST = 10_000
PAD = "r" * 420  # an event of ~500 bytes, as a small job return


class Arrivals:
    """A listener on one bus, in a thread: when each burst event arrived."""

    def __init__(self, config: Config) -> None:
        self.ids: list[str] = []
        self.last = 0.0
        self.listener = Listener(config, "salt/job/")
        self.listener.connect(10.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            event = self.listener.receive(timeout=0.2)
            if event is not None:
                self.ids.append(event.data["id"])
                self.last = time.monotonic()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10.0)
        self.listener.close()


def burst(root: Path, nats_server: NatsServer, tag: Callable[[int], str]) -> tuple[float, float]:
    """Fire BURST events tagged ``tag(n)`` on a (the last acknowledged) and
    check that each reached b and c once, in order, and was imported once.
    Returns how long the firing took and how late the last delivery was."""
    url = [nats_server.url]
    a, b, c = Node(root, "a", url), Node(root, "b", url), Node(root, "c", url)
    with running([a, b, c]):
        arrivals = {node.name: Arrivals(node.config) for node in (b, c)}
        ids = [f"{n}-{uuid.uuid4().hex}" for n in range(BURST)]
        try:
            with Sender(a.config) as sender:
                first_fire = time.monotonic()
                for n, event_id in enumerate(ids[:-1]):
                    sender.fire(tag(n), {"id": event_id, "r": PAD}, timeout=10.0)
                # The last acknowledged: the publisher has taken every one.
                last = {"id": ids[-1], "r": PAD}
                sender.fire(tag(BURST - 1), last, timeout=10.0, ack=True)
                last_fire = time.monotonic()
            for name, seen in arrivals.items():
                wait_until(
                    lambda seen=seen: len(seen.ids) >= BURST, f"{BURST} events on {name}", 300
                )
            time.sleep(1.5)  # a duplicate arriving late is seen too
        finally:
            for seen in arrivals.values():
                seen.close()
        for name, seen in arrivals.items():
            assert seen.ids == ids, f"{name}: not every event once, in order"
        fired = [seq for seq, t, _ in a.events() if t.startswith("salt/job/")]
        assert len(fired) == BURST
        for node in (b, c):
            imported = [(origin, seq) for origin, seq, _, _ in node.imported()]
            assert imported == [("a", seq) for seq in fired], node.name  # once each, in order
            assert [data["id"] for _, _, _, data in node.imported()] == ids
        late = max(seen.last for seen in arrivals.values()) - last_fire
        return last_fire - first_fire, late


def test_a_burst_of_10000_reaches_both_other_buses_once_in_order(
    root: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
):
    # Each event its own jid: the export cannot batch them (envelope.py).
    firing, late = burst(root, nats_server, lambda n: f"salt/job/{n}/ret/m{n}")
    with capsys.disabled():
        print(
            f"\nburst: {BURST} events fired on a in {firing:.2f} s; "
            f"the last delivered on b and c {late:.2f} s after the last fire"
        )


def test_a_job_returning_from_10000_minions_reaches_both_other_buses_once_in_order(
    root: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
):
    # One jid: the subjects differ in their last token only, so the export
    # may carry them in batches (envelope.py), unlike the test above.
    jid = "20261204054700123456"
    firing, late = burst(root, nats_server, lambda n: f"salt/job/{jid}/ret/m{n}")
    with capsys.disabled():
        print(
            f"\njob burst: {BURST} returns of one jid fired on a in {firing:.2f} s; "
            f"the last delivered on b and c {late:.2f} s after the last fire"
        )

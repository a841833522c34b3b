"""The bus collector: metric families from a publisher's statistics, with
Prometheus's names and types and bounded labels."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from saltbus.client import Listener, Sender
from saltbus.client.admin import fetch_stats
from saltbus.config import Config
from saltbus.metrics.bus import BusCollector, commit_histogram, journal_bytes
from saltbus.server import EmbeddedPublisher
from saltbus.wire import encode_frame, pack_body


def scrape(stats: dict[str, Any]) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(BusCollector(lambda: stats))
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_statistics_of_a_real_publisher(bus_config: Config) -> None:
    with (
        EmbeddedPublisher(bus_config),
        Listener(bus_config, resume=False) as listener,
        Sender(bus_config) as sender,
    ):
        listener.connect(timeout=5)
        for n in range(3):
            sender.fire("test/bus", {"n": n}, timeout=5, ack=True)
        assert all(listener.receive(timeout=5) for _ in range(3))
        # One event over max_event_size and one frame that is not msgpack,
        # each on a connection of its own (each is closed after it).
        for data in (
            encode_frame(pack_body("test/big", {"pad": "x" * (bus_config.max_event_size + 1)})),
            b"\xc1 not a frame",
        ):
            with socket.socket(socket.AF_UNIX) as raw:
                raw.connect(str(bus_config.pull_address))
                raw.sendall(data)
                raw.settimeout(5)
                assert raw.recv(1) == b""  # closed by the publisher
        families = scrape(fetch_stats(bus_config))
    assert samples(families["saltbus_events_received"]) == {(): 3.0}
    assert families["saltbus_events_received"].type == "counter"
    assert samples(families["saltbus_events_delivered"]) == {(): 3.0}
    assert samples(families["saltbus_subscribers"]) == {(): 1.0}
    assert families["saltbus_subscribers"].type == "gauge"
    assert samples(families["saltbus_journal_last_seq"]) == {(): 3.0}
    assert samples(families["saltbus_journal_up"]) == {(): 1.0}
    assert samples(families["saltbus_events_refused"]) == {
        (("reason", "journal_unavailable"),): 0,
        (("reason", "too_large"),): 1,
        (("reason", "malformed"),): 1,
    }
    assert samples(families["saltbus_journal_bytes"])[()] > 0
    # The default busy poll (100 µs) opened after those events: some CPU, well
    # under the time the test took.
    assert 0 < samples(families["saltbus_busy_poll_seconds"])[()] < 1.0
    assert families["saltbus_busy_poll_seconds"].type == "counter"


def test_returners_federation_and_reactor_are_labelled_by_name_only() -> None:
    stats = {
        "node": "master",
        "salt_version": "3007",
        "received": 10,
        "delivered": 25,
        "dropped": 2,
        "lagged": 1,
        "uptime": 3.5,
        "last_seq": 10,
        "journal": None,
        "subscribers": [
            {"peer": "a", "queued_events": 4, "queued_bytes": 400},
            {"peer": "b", "queued_events": 1, "queued_bytes": 100},
        ],
        "returners": [
            {"name": "pgjsonb", "lag": 7, "returned": 3, "failures": 2, "state": "retrying"},
            {
                "name": "http",
                "lag": 0,
                "returned": 9,
                "failures": 0,
                "state": "running",
                "details": {"sent": 9, "dead_lettered": 1, "dead_letter": "/x", "tls": True},
            },
        ],
        "cluster": {
            "state": "linked",
            "export": {"lag": 5, "exported": 9, "failures": 0},
            "import": {"imported": 4, "duplicates": 2},
        },
        "reactor": {
            "events": 12,
            "queue_depth": 3,
            "gated_waiting": 4,
            "missing_returns_open_jobs": 2,
            "missing_returns_reported": 5,
            "missing_returns_dropped": 0,
            "dropped": 0,
            "stopped": 1,
            "outcomes": {"restart": {"succeeded": 3, "failed": 1}},
            "skipped_by_when": {"restart": 2},
            "skipped_by_throttle": {},
        },
    }
    families = scrape(stats)
    assert samples(families["saltbus_subscriber_queue_events"]) == {(): 5.0}
    assert samples(families["saltbus_subscriber_dropped"]) == {(): 2.0}
    assert samples(families["saltbus_subscriber_lagged"]) == {(): 1.0}
    assert "saltbus_journal_last_seq" not in families  # no journal
    assert samples(families["saltbus_returner_lag_events"]) == {
        (("returner", "pgjsonb"),): 7,
        (("returner", "http"),): 0,
    }
    assert samples(families["saltbus_returner_failures"]) == {
        (("returner", "pgjsonb"),): 2,
        (("returner", "http"),): 0,
    }
    assert samples(families["saltbus_returner_up"]) == {
        (("returner", "pgjsonb"),): 0,
        (("returner", "http"),): 1,
    }
    # A sink's own integer counters, not its paths or flags.
    assert samples(families["saltbus_returner_sink"]) == {
        (("counter", "dead_lettered"), ("returner", "http")): 1,
        (("counter", "sent"), ("returner", "http")): 9,
    }
    assert samples(families["saltbus_federation_export_lag_events"]) == {(): 5}
    assert samples(families["saltbus_federation_imported_events"]) == {(): 4}
    assert samples(families["saltbus_federation_duplicates_dropped"]) == {(): 2}
    assert samples(families["saltbus_reactor_reactions"]) == {
        (("outcome", "failed"), ("reaction", "restart")): 1,
        (("outcome", "skipped_when"), ("reaction", "restart")): 2,
        (("outcome", "succeeded"), ("reaction", "restart")): 3,
    }
    assert samples(families["saltbus_reactor_queue_events"]) == {(): 3}
    assert samples(families["saltbus_reactor_gated_events"]) == {(): 4}
    assert samples(families["saltbus_reactor_missing_returns_open_jobs"]) == {(): 2}
    assert samples(families["saltbus_reactor_missing_returns_reported"]) == {(): 5}
    # No per-connection labels: peers do not become series.
    for family in families.values():
        for sample in family.samples:
            assert "peer" not in sample.labels


def test_the_commit_histogram_counts_observations() -> None:
    registry = CollectorRegistry()
    histogram = commit_histogram(registry)
    histogram.observe(0.0003)
    histogram.observe(0.2)
    text = generate_latest(registry).decode()
    assert 'saltbus_journal_commit_seconds_bucket{le="0.0005"} 1.0' in text
    assert "saltbus_journal_commit_seconds_count 2.0" in text


def test_journal_bytes_adds_the_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"x" * 100)
    (tmp_path / "j.sqlite3-wal").write_bytes(b"x" * 50)
    assert journal_bytes(path) == 150
    assert journal_bytes(tmp_path / "missing") == 0


def test_a_lagged_subscriber_is_counted_once_while_and_after_it_goes(bus_config: Config) -> None:
    config = bus_config.replace(subscriber_queue_events=10)

    def wait_for(check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while not check(stats := fetch_stats(config)):
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        return stats

    with EmbeddedPublisher(config):
        idle = Listener(config, resume=False, reconnect=False)
        idle.connect(timeout=5)
        with Sender(config) as sender:
            for n in range(3000):  # past the socket buffers and the queue of 10
                sender.fire("test/flood", {"n": n, "pad": "x" * 1000}, timeout=5)
            sender.fire("test/flood", {"end": True}, timeout=5, ack=True)
        cut_loose = scrape(wait_for(lambda s: s["lagged"] >= 1))
        idle.close()
        gone = scrape(wait_for(lambda s: not s["subscribers"]))
    for families in (cut_loose, gone):
        assert samples(families["saltbus_subscriber_lagged"]) == {(): 1.0}
    assert samples(gone["saltbus_subscribers"]) == {(): 0.0}
    # What it took before it was cut loose still counts as delivered.
    delivered = samples(gone["saltbus_events_delivered"])[()]
    assert delivered == samples(cut_loose["saltbus_events_delivered"])[()] > 0

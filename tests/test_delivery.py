"""Nothing lost: sequence numbers, the journal, resume, server-side filters,
acknowledged fire and slow subscribers, in process against real sockets."""

from __future__ import annotations

import asyncio
import io
import socket
import time

import pytest

from saltbus import AsyncClient, Config, Listener, Sender
from saltbus.cli import stats as stats_command
from saltbus.cli.main import build_parser
from saltbus.client.admin import fetch_stats
from saltbus.control import Subscribe, encode_control
from saltbus.server import EmbeddedPublisher, Server
from saltbus.server import replay as replay_module
from saltbus.wire import FrameDecoder, Framing, unpack_body


def drain(listener: Listener, count: int, timeout: float = 10) -> list:
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = listener.receive(timeout=max(0.0, deadline - time.monotonic()))
        if event is not None:
            events.append(event)
    return events


def test_sequence_numbers_increase_by_one(bus_config: Config, publisher: EmbeddedPublisher):
    with Listener(bus_config) as listener, Sender(bus_config) as sender:
        for n in range(50):
            sender.fire("seq/evt", {"n": n})
        events = drain(listener, 50)
    assert [e.seq for e in events] == list(range(1, 51))


def test_numbering_continues_after_a_restart(bus_config: Config):
    with EmbeddedPublisher(bus_config), Sender(bus_config) as sender:
        last = sender.fire("a/1", {}, ack=True).seq
    with EmbeddedPublisher(bus_config), Sender(bus_config) as sender:
        after = sender.fire("a/2", {}, ack=True).seq
    assert last == 1 and after == 2


def test_acked_fire_returns_the_sequence_number(bus_config: Config, publisher: EmbeddedPublisher):
    with Sender(bus_config) as sender:
        seqs = [sender.fire("ack/evt", {"n": n}, ack=True).seq for n in range(20)]
    assert seqs == list(range(1, 21))


def test_acked_fire_times_out_clearly_without_a_saltbus_publisher(bus_config: Config):
    # A bare listening socket accepts the frame and never answers, as Salt's publisher.
    bus_config.sock_dir.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(bus_config.pull_address))
    server.listen(1)
    try:
        with Sender(bus_config) as sender, pytest.raises(Exception, match="no acknowledgement"):
            sender.fire("a/b", {}, timeout=0.3, ack=True)
    finally:
        server.close()


def test_resume_replays_what_was_missed_without_gap_or_duplicate(
    bus_config: Config, publisher: EmbeddedPublisher
):
    with Sender(bus_config) as sender:
        with Listener(bus_config) as listener:
            sender.fire("r/evt", {"n": 0}, ack=True)
            first = drain(listener, 1)
        since = first[0].seq
        for n in range(1, 201):
            sender.fire("r/evt", {"n": n}, ack=n % 50 == 0)
        with Listener(bus_config, since=since) as resumed:
            for n in range(201, 301):
                sender.fire("r/evt", {"n": n})
            events = drain(resumed, 300)
    assert [e.data["n"] for e in events] == list(range(1, 301))
    assert [e.seq for e in events] == list(range(since + 1, since + 301))


@pytest.mark.parametrize(
    ("tag", "match_type"),
    [("wanted/", "startswith"), ("/wanted", "endswith"), (r"^w.nted/\d+/wanted$", "regex")],
)
def test_a_filtered_resume_replays_only_its_events_across_chunks(
    bus_config: Config, publisher: EmbeddedPublisher, tag: str, match_type: str
):
    # The filter is applied inside the journal's query: more matching events
    # than one replay chunk, among as many that do not match.
    wanted = replay_module.CHUNK + 500
    with Sender(bus_config) as sender:
        for n in range(2 * wanted):
            name = f"wanted/{n}/wanted" if n % 2 else f"noise/{n}/noise"
            sender.fire(name, {"n": n}, ack=n == 2 * wanted - 1)
        with Listener(bus_config, tag, match_type, since=0) as resumed:
            sender.fire(f"wanted/{2 * wanted}/wanted", {"n": 2 * wanted})
            events = drain(resumed, wanted + 1)
    assert [e.data["n"] for e in events] == [*range(1, 2 * wanted, 2), 2 * wanted]


def test_listener_resumes_across_a_publisher_restart(bus_config: Config):
    listener = Listener(bus_config)
    try:
        with EmbeddedPublisher(bus_config), Sender(bus_config) as sender:
            listener.connect()
            for n in range(10):
                sender.fire("x/evt", {"n": n}, ack=True)
            assert [e.data["n"] for e in drain(listener, 5)] == [0, 1, 2, 3, 4]
        # Down: nothing is read. Up again, with more events fired before the
        # listener gets back: it resumes after event 5 from the journal.
        with EmbeddedPublisher(bus_config), Sender(bus_config) as sender:
            for n in range(10, 20):
                sender.fire("x/evt", {"n": n}, ack=True)
            rest = drain(listener, 15)
    finally:
        listener.close()
    assert [e.data["n"] for e in rest] == list(range(5, 20))


def test_server_side_filter_sends_only_matching_events(
    bus_config: Config, publisher: EmbeddedPublisher
):
    with Listener(bus_config, "wanted/") as listener, Sender(bus_config) as sender:
        for n in range(100):
            sender.fire("noise/evt" if n % 10 else "wanted/evt", {"n": n})
        events = drain(listener, 10)
        stats = publisher.subscriber_stats()
    assert [e.data["n"] for e in events] == list(range(0, 100, 10))
    filtered = [s for s in stats if s.filtered]
    assert filtered and filtered[0].delivered == 10


def test_a_salt_style_subscriber_gets_everything_and_no_control_frames(
    bus_config: Config, publisher: EmbeddedPublisher
):
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(bus_config.pub_address))
    raw.settimeout(5)
    try:
        time.sleep(0.1)  # the publisher accepts it
        with Sender(bus_config) as sender:
            sender.fire("one/evt", {"n": 1})
            sender.fire("two/evt", {"n": 2})
        decoder = FrameDecoder(Framing.BARE)
        frames = []
        while len(frames) < 2:
            decoder.receive_data(raw.recv(65536))
            frames.extend(decoder)
    finally:
        raw.close()
    assert [unpack_body(f.body)[0] for f in frames] == ["one/evt", "two/evt"]
    assert all(set(f.head) == {"seq", "time"} for f in frames)


def test_resumable_subscriber_that_lags_is_disconnected_and_catches_up(bus_config: Config):
    config = bus_config.replace(subscriber_queue_events=50, subscriber_queue_bytes=1 << 20)
    total = 3000
    with EmbeddedPublisher(config) as bus, Listener(config) as slow, Sender(config) as sender:
        body = "x" * 1000
        for n in range(total):
            sender.fire("lag/evt", {"n": n, "pad": body})
        # The listener read nothing while its queue overflowed; it was told it
        # lagged, and reconnecting with resume replays the rest from the journal.
        events = drain(slow, total, timeout=30)
        stats = bus.subscriber_stats()
    assert [e.data["n"] for e in events] == list(range(total))
    assert all(s.dropped == 0 for s in stats)


def test_a_stuck_salt_subscriber_is_cut_loose_and_reported(bus_config: Config):
    config = bus_config.replace(
        subscriber_queue_events=20, subscriber_queue_bytes=1 << 20, subscriber_stall_timeout=1.0
    )
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with EmbeddedPublisher(config) as bus, Listener(config, "saltbus/subscriber/lagged") as watch:
        stuck.connect(str(config.pub_address))
        time.sleep(0.1)
        with Sender(config) as sender:
            # The firing side waits while the stuck one holds its queue full,
            # for the stall timeout at most.
            for n in range(2000):
                sender.fire("flood/evt", {"n": n, "pad": "y" * 1000}, timeout=10)
        report = watch.receive(timeout=10)
        remaining = bus.subscriber_stats()
    stuck.close()
    assert report is not None and report.tag == "saltbus/subscriber/lagged"
    assert report.data["dropped"] > 0 and report.data["peer"].startswith("pid ")
    assert [s.resumable for s in remaining] == [True], "the stuck one is still connected"


def test_stats_describe_the_publisher(bus_config: Config, publisher: EmbeddedPublisher):
    with Listener(bus_config, "x/") as listener, Sender(bus_config) as sender:
        sender.fire("x/1", {}, ack=True)
        assert listener.receive(timeout=5) is not None
        stats = fetch_stats(bus_config)
    assert stats["last_seq"] == 1 and stats["received"] == 1
    assert any(s["resumable"] and s["filtered"] for s in stats["subscribers"])
    assert stats["journal"].endswith(".sqlite3")


def test_async_client_resumes_and_acks(bus_config: Config):
    async def main() -> list[int]:
        async with Server(bus_config), AsyncClient(bus_config) as bus:
            sub = bus.subscribe("a/")
            seqs = [(await bus.fire("a/evt", {"n": n}, ack=True)).seq for n in range(5)]
            got = [(await sub.next(timeout=5)).seq for _ in range(5)]
            assert got == seqs
        return got

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]


def test_journal_off_still_numbers_and_delivers(bus_config: Config):
    config = bus_config.replace(journal="none")
    with EmbeddedPublisher(config), Listener(config) as listener, Sender(config) as sender:
        seq = sender.fire("nj/evt", {}, ack=True).seq
        event = listener.receive(timeout=5)
    assert seq == 1 and event is not None and event.seq == 1
    assert not config.data_dir or not any(config.data_dir.glob("*.sqlite3"))


@pytest.mark.parametrize("journal", ["none", "batch"])
def test_no_event_is_left_in_flight_once_delivered(bus_config: Config, journal: str):
    config = bus_config.replace(journal=journal)
    with EmbeddedPublisher(config), Listener(config) as listener, Sender(config) as sender:
        for n in range(10):
            sender.fire("f/evt", {"n": n})
        sender.fire("f/last", {}, ack=True)
        assert len(drain(listener, 11)) == 11
        stats = fetch_stats(config)
        shown = io.StringIO()
        args = build_parser().parse_args(["stats", "--sock-dir", str(config.sock_dir)])
        stats_command.run(args, shown)
    assert stats["received"] == 11
    assert stats["journal_in_flight"] == 0  # was -11 without a journal
    assert (stats["journal"] is None) == (journal == "none")
    if journal == "none":
        assert "journal: off\n" in shown.getvalue()
    else:
        assert f"journal: {stats['journal']} (0 in flight)" in shown.getvalue()


def test_a_subscribe_frame_from_another_epoch_is_not_replayed(
    bus_config: Config, publisher: EmbeddedPublisher
):
    with Sender(bus_config) as sender:
        for n in range(5):
            sender.fire("e/evt", {"n": n}, ack=True)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(bus_config.pub_address))
    raw.settimeout(5)
    try:
        raw.sendall(encode_control(Subscribe((), since=1, epoch=12345), Framing.BARE))
        decoder = FrameDecoder(Framing.BARE)
        decoder.receive_data(raw.recv(65536))
        frames = list(decoder)
    finally:
        raw.close()
    assert len(frames) == 1 and not frames[0].body  # Subscribed, and no replay
    assert frames[0].head["saltbus"]["op"] == "subscribed"
    assert frames[0].head["saltbus"]["replaying"] is False

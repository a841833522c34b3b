"""FanOut and Subscriber (saltbus.server.fanout) on fake transports.

No sockets here: a fake write-transport records every ``write`` call, so the
tests can see how many writes a batch costs, what is queued while a reader is
paused, what is dropped past the bounds, and the exact bytes of each frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltbus.control import Lagged, decode_control
from saltbus.event import MatchType, tag_matcher
from saltbus.journal.records import JournalRecord
from saltbus.server.fanout import FLUSH_CHUNK, TRANSPORT_HIGH_WATER, FanOut, Subscriber
from saltbus.wire import Frame, FrameDecoder, Framing, body_tag, encode_frame, pack_body


class Feed:
    """Numbers bodies from 1 and delivers them, as the intake does (the fan-out
    numbers nothing)."""

    def __init__(self, fanout: FanOut) -> None:
        self.fanout = fanout
        self.next_seq = 1

    def publish(self, bodies: Sequence[bytes]) -> int:
        now = time.time()
        records = [
            JournalRecord(self.next_seq + i, now, body_tag(b), b) for i, b in enumerate(bodies)
        ]
        self.next_seq += len(records)
        self.fanout.deliver(records)
        return self.next_seq - 1


class FakeTransport:
    """The part of asyncio.WriteTransport a Subscriber uses, recording writes.

    With ``pause_after`` set, a write that brings the bytes written since the
    last :meth:`drain` over that many calls ``subscriber.pause()`` synchronously,
    as asyncio's transports call ``pause_writing`` from inside ``write``.
    """

    def __init__(self, pause_after: int | None = None) -> None:
        self.writes: list[bytes] = []
        self.limits: dict[str, int | None] = {}
        self.pause_after = pause_after
        self.subscriber: Subscriber | None = None
        self.closed = False
        self._unread = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        assert data, "empty write"
        assert not self.closed, "write after close"
        self.writes.append(data)
        self._unread += len(data)
        if (
            self.pause_after is not None
            and self.subscriber is not None
            and self._unread > self.pause_after
        ):
            self.subscriber.pause()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = {"high": high, "low": low}

    def get_write_buffer_size(self) -> int:
        return self._unread

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def drain(self) -> None:
        """The reader caught up: the buffer is empty again (call resume() yourself)."""
        self._unread = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def make_subscriber(
    *,
    max_events: int = 1000,
    max_bytes: int = 1 << 20,
    matcher: Any = None,
    pause_after: int | None = None,
    peer: str = "pid 1 uid 0",
    on_dropped: Callable[[Subscriber, int], None] | None = None,
) -> tuple[Subscriber, FakeTransport]:
    transport = FakeTransport(pause_after)
    sub = Subscriber(
        cast(Any, transport),
        peer,
        max_events=max_events,
        max_bytes=max_bytes,
        matcher=matcher,
        on_dropped=on_dropped,
    )
    transport.subscriber = sub
    return sub, transport


def body(tag: str, n: int, pad: int = 0) -> bytes:
    data: dict[str, Any] = {"n": n}
    if pad:
        data["pad"] = "x" * pad
    return pack_body(tag, data)


def decode(data: bytes, framing: Framing = Framing.BARE) -> list[Frame]:
    decoder = FrameDecoder(framing)
    decoder.receive_data(data)
    frames = list(decoder)
    assert decoder.next_frame() is None
    return frames


def ns(frames: Sequence[Frame]) -> list[int]:
    return [msgpack.unpackb(f.body.split(b"\n\n", 1)[1])["n"] for f in frames]


def seqs(frames: Sequence[Frame]) -> list[int]:
    return [f.head["seq"] for f in frames]


# -- straight delivery ---------------------------------------------------------


def test_order_preserved_and_one_write_per_batch() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    batches = [
        [body("a/b", i) for i in range(start, start + size)]
        for start, size in ((0, 3), (3, 1), (4, 5), (9, 200))
    ]
    for batch in batches:
        feed.publish(batch)
    assert len(transport.writes) == len(batches)
    for write, batch in zip(transport.writes, batches, strict=True):
        assert [f.body for f in decode(write)] == batch
    frames = decode(transport.data)
    assert ns(frames) == list(range(209))
    assert sub.stats().delivered == 209
    assert sub.stats().dropped == 0
    assert sub.stats().queued_events == 0


def test_frame_bytes_are_salts_frame_with_seq_in_head() -> None:
    """A Salt listener reads only ``body``: it must arrive byte for byte, in
    Salt's two-key frame; saltbus's extras ride in ``head``."""
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    b = body("salt/auth", 1)
    before = time.time()
    feed.publish([b])
    value = msgpack.unpackb(transport.data, raw=False)
    assert list(value) == ["head", "body"]
    assert value["body"] == b
    assert value["head"]["seq"] == 1
    assert before <= value["head"]["time"] <= time.time()
    assert transport.data == encode_frame(b, value["head"], Framing.BARE)


@pytest.mark.parametrize("framing", [Framing.BARE, Framing.LENGTH_PREFIXED])
def test_framing_of_published_frames(framing: Framing) -> None:
    fanout = FanOut(framing)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    feed.publish([body("f/x", i) for i in range(5)])
    data = transport.data
    if framing is Framing.LENGTH_PREFIXED:
        assert data[0] == 0x00
        first = decode(data, framing)[0]
        assert int.from_bytes(data[:4], "big") == len(encode_frame(first.body, first.head))
    else:
        assert data[0] == 0x82
    assert ns(decode(data, framing)) == list(range(5))


def test_subscriber_sets_transport_high_water() -> None:
    _sub, transport = make_subscriber()
    assert transport.limits["high"] == TRANSPORT_HIGH_WATER


def test_unfiltered_subscribers_share_one_write_per_batch() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    pairs = [make_subscriber(peer=f"pid {i} uid 0") for i in range(4)]
    for sub, _t in pairs:
        fanout.add(sub)
    feed.publish([body("x", i) for i in range(10)])
    feed.publish([body("x", 10)])
    first = pairs[0][1].writes
    assert len(first) == 2
    for _sub, transport in pairs[1:]:
        assert transport.writes == first


def test_removed_subscriber_gets_nothing_more() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    feed.publish([body("x", 1)])
    fanout.remove(sub)
    fanout.remove(sub)  # twice is harmless
    feed.publish([body("x", 2)])
    assert ns(decode(transport.data)) == [1]


# -- pausing, queueing, dropping -------------------------------------------------


def test_queued_while_paused_and_flushed_in_order_on_resume() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    feed.publish([body("q", 0)])
    sub.pause()
    sent = [body("q", i) for i in range(1, 31)]
    for i in range(0, 30, 3):
        feed.publish(sent[i : i + 3])
    assert len(transport.writes) == 1  # nothing while paused
    stats = sub.stats()
    assert stats.queued_events == 30
    assert stats.delivered == 1
    sub.resume()
    assert len(transport.writes) == 2  # the whole backlog in one write (< one chunk)
    assert stats.queued_bytes == len(transport.writes[1])
    assert ns(decode(transport.data)) == list(range(31))
    assert seqs(decode(transport.data)) == list(range(1, 32))
    stats = sub.stats()
    assert (stats.delivered, stats.dropped, stats.queued_events, stats.queued_bytes) == (
        31,
        0,
        0,
        0,
    )
    # After the flush, delivery is direct again.
    feed.publish([body("q", 31)])
    assert ns(decode(transport.writes[-1])) == [31]


def test_drop_oldest_past_max_events() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_events=5)
    fanout.add(sub)
    sub.pause()
    for i in range(12):
        feed.publish([body("d", i)])
    stats = sub.stats()
    assert stats.dropped == 7
    assert stats.queued_events == 5
    sub.resume()
    frames = decode(transport.data)
    assert ns(frames) == [7, 8, 9, 10, 11]
    assert seqs(frames) == [8, 9, 10, 11, 12]  # the gap shows the loss to a seq-aware reader
    assert sub.stats().dropped == 7
    assert sub.stats().delivered == 5


def test_drop_oldest_past_max_events_within_one_batch() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_events=4)
    fanout.add(sub)
    sub.pause()
    feed.publish([body("d", i) for i in range(10)])
    assert sub.stats().dropped == 6
    sub.resume()
    assert ns(decode(transport.data)) == [6, 7, 8, 9]


def test_drop_oldest_past_max_bytes() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    # Same-sized frames: the tag and data have fixed widths, seq < 128, time a float64.
    probe, probe_transport = make_subscriber()
    fanout.add(probe)
    feed.publish([body("b", 10, pad=100)])
    fanout.remove(probe)
    frame_size = len(probe_transport.data)
    sub, transport = make_subscriber(max_events=10_000, max_bytes=3 * frame_size + frame_size // 2)
    fanout.add(sub)
    sub.pause()
    for i in range(10, 30):
        feed.publish([body("b", i, pad=100)])
    stats = sub.stats()
    assert stats.queued_events == 3
    assert stats.queued_bytes == 3 * frame_size
    assert stats.queued_bytes <= sub.max_bytes
    assert stats.dropped == 17
    sub.resume()
    frames = decode(transport.data)
    assert ns(frames) == [27, 28, 29]
    assert seqs(frames) == [19, 20, 21]


def test_a_frame_larger_than_max_bytes_is_dropped_while_paused() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_bytes=100)
    fanout.add(sub)
    sub.pause()
    feed.publish([body("big", 1, pad=500)])
    assert sub.stats().dropped == 1
    assert sub.stats().queued_bytes == 0
    sub.resume()
    assert transport.writes == []


def test_not_paused_subscriber_is_not_bounded_by_queue_limits() -> None:
    """The bounds are for a stalled reader; a reading one gets every event."""
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_events=2, max_bytes=10)
    fanout.add(sub)
    feed.publish([body("n", i) for i in range(50)])
    assert ns(decode(transport.data)) == list(range(50))
    assert sub.stats().dropped == 0


def test_paused_subscriber_never_affects_another() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    stuck, stuck_transport = make_subscriber(max_events=3, peer="pid 2 uid 0")
    good, good_transport = make_subscriber(max_events=3, peer="pid 3 uid 0")
    fanout.add(stuck)
    fanout.add(good)
    stuck.pause()
    for i in range(0, 1000, 10):
        feed.publish([body("p", j) for j in range(i, i + 10)])
    assert stuck_transport.writes == []
    assert stuck.stats().dropped == 997
    assert len(good_transport.writes) == 100
    assert ns(decode(good_transport.data)) == list(range(1000))
    assert good.stats().delivered == 1000
    assert good.stats().dropped == 0
    stuck.resume()
    assert ns(decode(stuck_transport.data)) == [997, 998, 999]


def test_resume_flushes_in_chunks_and_stops_when_the_transport_pauses_again() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    # The transport pauses the subscriber once more than one chunk is unread.
    sub, transport = make_subscriber(
        max_events=100_000, max_bytes=64 << 20, pause_after=FLUSH_CHUNK
    )
    fanout.add(sub)
    sub.pause()
    n = 3000
    for i in range(n):
        feed.publish([body("c", i, pad=400)])  # ~430 bytes a frame, ~1.3 MB in all
    queued = sub.stats().queued_bytes
    assert queued > 4 * FLUSH_CHUNK
    resumes = 0
    while sub.stats().queued_events:
        transport.drain()
        sub.resume()
        resumes += 1
        assert resumes < 100
        # Each write is at most one chunk plus the frame that crossed the line.
        assert all(len(w) < FLUSH_CHUNK + 1024 for w in transport.writes)
        # A publish while paused mid-backlog goes behind the backlog.
        feed.publish([body("c", n + resumes - 1, pad=400)])
    assert resumes >= 3
    transport.drain()
    sub.resume()
    assert ns(decode(transport.data)) == list(range(n + resumes))
    assert sub.stats().dropped == 0


def test_matcher_filters_and_keeps_global_seq() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    auth, auth_t = make_subscriber(matcher=tag_matcher("salt/auth", MatchType.STARTSWITH))
    job, job_t = make_subscriber(matcher=tag_matcher("*/ret/*", MatchType.FNMATCH))
    everything, all_t = make_subscriber()
    for sub in (auth, job, everything):
        fanout.add(sub)
    tags = ["salt/auth", "salt/job/1/ret/web1", "other", "salt/authx", "salt/job/2/new"]
    feed.publish([body(t, i) for i, t in enumerate(tags)])
    feed.publish([body("nothing/matches", 99)])
    auth_frames = decode(auth_t.data)
    assert [f.tag for f in auth_frames] == ["salt/auth", "salt/authx"]
    assert seqs(auth_frames) == [1, 4]
    assert [f.tag for f in decode(job_t.data)] == ["salt/job/1/ret/web1"]
    assert len(job_t.writes) == 1  # no empty write for a batch with nothing wanted
    assert seqs(decode(all_t.data)) == [1, 2, 3, 4, 5, 6]
    assert auth.stats().delivered == 2


def test_filtered_subscriber_queues_only_what_it_wants() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_events=2, matcher=tag_matcher("keep"))
    fanout.add(sub)
    sub.pause()
    feed.publish([body("keep", 1), body("skip", 2), body("skip", 3), body("keep", 4)])
    assert sub.stats().queued_events == 2
    assert sub.stats().dropped == 0
    sub.resume()
    assert ns(decode(transport.data)) == [1, 4]


def test_lag_is_logged_once_naming_the_peer_and_again_on_catch_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="saltbus.server")
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, _transport = make_subscriber(max_events=2, peer="pid 4242 uid 7")
    fanout.add(sub)
    sub.pause()
    for i in range(50):
        feed.publish([body("l", i)])
    lag_lines = [r.getMessage() for r in caplog.records if "not reading" in r.getMessage()]
    assert len(lag_lines) == 1
    assert "pid 4242 uid 7" in lag_lines[0]
    sub.resume()
    caught = [r.getMessage() for r in caplog.records if "caught up" in r.getMessage()]
    assert len(caught) == 1
    assert "48 events dropped" in caught[0]


def test_on_dropped_reports_each_overflow_with_its_count() -> None:
    reports: list[tuple[Subscriber, int]] = []
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, _transport = make_subscriber(max_events=3, on_dropped=lambda s, n: reports.append((s, n)))
    fanout.add(sub)
    sub.pause()
    feed.publish([body("r", i) for i in range(5)])  # 2 over
    feed.publish([body("r", 5)])  # 1 over
    assert [(s is sub, n) for s, n in reports] == [(True, 2), (True, 1)]
    assert sum(n for _s, n in reports) == sub.stats().dropped == 3


def test_resumable_subscriber_is_sent_lagged_and_closed_instead_of_losing_events() -> None:
    reports: list[int] = []
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_events=3, on_dropped=lambda _s, n: reports.append(n))
    sub.resumable = True
    other, other_transport = make_subscriber(max_events=3)
    fanout.add(sub)
    fanout.add(other)
    feed.publish([body("z", 0)])
    sub.pause()
    feed.publish([body("z", i) for i in range(1, 5)])  # 4 queued: over the bound
    assert transport.closed
    frames = decode(transport.data)
    assert ns(frames[:1]) == [0]
    assert decode_control(frames[-1]) == Lagged(delivered=1)
    stats = sub.stats()
    assert stats.dropped == 0 and stats.queued_events == 0 and stats.resumable
    assert reports == []
    # Nothing more is written to it (FakeTransport asserts no write after close).
    feed.publish([body("z", 5)])
    sub.resume()
    assert ns(decode(other_transport.data)) == [0, 1, 2, 3, 4, 5]


def test_hold_queues_live_frames_behind_direct_writes_until_release() -> None:
    """A replay is written with write_direct while live frames wait; on release
    they follow in order."""
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    sub.hold()
    feed.publish([body("live", 10), body("live", 11)])
    assert transport.writes == []
    replayed = b"".join(encode_frame(body("old", i), {"seq": 100 + i}) for i in range(3))
    sub.write_direct(replayed, 3)
    sub.resume()  # a resume while holding must not let live frames overtake the replay
    feed.publish([body("live", 12)])
    assert transport.data == replayed
    sub.release()
    assert ns(decode(transport.data)) == [0, 1, 2, 10, 11, 12]
    assert sub.stats().delivered == 6
    feed.publish([body("live", 13)])
    assert ns(decode(transport.writes[-1])) == [13]


def test_closed_subscriber_takes_nothing() -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber()
    fanout.add(sub)
    sub.closed = True
    feed.publish([body("c", 1)])
    sub.write_direct(b"x", 1)
    assert transport.writes == []
    assert sub.stats().queued_events == 0


# -- property: whatever the pauses, a reader sees an in-order subsequence ----------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(min_value=0, max_value=6)),
        st.tuples(st.just("pause"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, max_events=st.integers(min_value=1, max_value=8))
def test_any_pause_pattern_gives_an_ordered_subsequence_and_counts_add_up(
    ops: list[tuple[str, int]], max_events: int
) -> None:
    fanout = FanOut(Framing.BARE)
    feed = Feed(fanout)
    sub, transport = make_subscriber(max_events=max_events)
    fanout.add(sub)
    # A reference model of the policy: direct while reading, else queue and
    # drop the oldest past max_events; resume flushes everything.
    expected: list[int] = []
    model_queue: list[int] = []
    model_paused = False
    published = 0
    for op, arg in ops:
        if op == "publish":
            batch = list(range(published, published + arg))
            feed.publish([body("h", n) for n in batch])
            published += arg
            if not model_paused and not model_queue:
                expected.extend(batch)
            else:
                model_queue.extend(batch)
                del model_queue[: max(0, len(model_queue) - max_events)]
        elif op == "pause":
            sub.pause()
            model_paused = True
        else:
            transport.drain()
            sub.resume()
            model_paused = False
            expected.extend(model_queue)
            model_queue.clear()
    sub.resume()
    expected.extend(model_queue)
    got = ns(decode(transport.data))
    assert got == expected
    assert got == sorted(set(got))  # in order, no duplicates
    stats = sub.stats()
    assert stats.delivered == len(got)
    assert stats.delivered + stats.dropped == published
    assert stats.queued_events == 0
    assert stats.queued_bytes == 0

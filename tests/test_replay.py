"""Replaying the journal to a resuming subscriber (saltbus.server.replay):
``replay``, ``gaps_in`` and ``first_available`` against a real journal file in
the test's directory, the subscriber on a fake transport that records every
write (tests/test_fanout.py), so the tests see the frames and how many writes
they took."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any, cast

import pytest

from saltbus.event import MatchType, tag_matcher
from saltbus.journal import Journal, JournalRecord
from saltbus.journal.tailed import TailedWriter
from saltbus.server.fanout import Subscriber, event_frame
from saltbus.server.gaps import JOURNAL_GAP_TAG
from saltbus.server.replay import CHUNK, first_available, gaps_in, replay, wait_indexed
from saltbus.wire import Frame, FrameDecoder, Framing, pack_body
from tests.test_fanout import FakeTransport
from tests.waiting import WAIT, wait_until_async


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "data" / "journal.sqlite"


def append(path: Path, events: list[tuple[str, dict[str, Any]]]) -> list[JournalRecord]:
    """Journal ``events`` after the journal's last seq, each stamped 1000 + its seq."""
    with Journal.open(path) as journal:
        first = journal.last_seq() + 1
        records = [
            JournalRecord(first + i, 1000.0 + first + i, tag, pack_body(tag, data))
            for i, (tag, data) in enumerate(events)
        ]
        journal.append(records)
    return records


def numbered(count: int, tag: str = "app/event") -> list[tuple[str, dict[str, Any]]]:
    return [(tag, {"n": n}) for n in range(count)]


def subscriber(
    framing: Framing = Framing.BARE, matcher: Any = None, pause_after: int | None = None
) -> tuple[Subscriber, FakeTransport]:
    """A subscriber on a fake transport; made inside the running loop, as the daemon makes it."""
    transport = FakeTransport(pause_after)
    sub = Subscriber(
        cast(Any, transport),
        "pid 1 uid 0",
        max_events=100_000,
        max_bytes=1 << 30,
        matcher=matcher,
        framing=framing,
    )
    transport.subscriber = sub
    return sub, transport


def frames_in(data: bytes, framing: Framing = Framing.BARE) -> list[Frame]:
    """The frames in ``data``, which must hold whole frames only."""
    decoder = FrameDecoder(framing)
    decoder.receive_data(data)
    frames = list(decoder)
    assert decoder.buffered == 0, "a frame written in part"
    return frames


def frames_of(transport: FakeTransport, framing: Framing = Framing.BARE) -> list[Frame]:
    return frames_in(transport.data, framing)


def writes_are(transport: FakeTransport, count: int) -> bool:
    return len(transport.writes) == count


def seqs_of(transport: FakeTransport, framing: Framing = Framing.BARE) -> list[int]:
    return [f.head["seq"] for f in frames_of(transport, framing)]


def replayed(path: Path, since: int, until: int, **options: Any) -> tuple[int, FakeTransport]:
    """What ``replay`` returns and writes for (since, until] to a fresh subscriber."""
    pattern = options.pop("pattern", None)

    async def main() -> tuple[int, FakeTransport]:
        sub, transport = subscriber(**options)
        sent = await asyncio.wait_for(replay(sub, path, since, until, pattern), WAIT)
        return sent, transport

    return asyncio.run(main())


# -- replay --------------------------------------------------------------------------------


def test_replay_writes_the_journaled_frames_after_since_up_to_until(journal: Path) -> None:
    records = append(journal, numbered(10))
    sent, transport = replayed(journal, 3, 8)
    assert sent == 5
    # Byte for byte the frames the live path sends: the same seq and time in the head.
    assert transport.data == b"".join(event_frame(r, Framing.BARE) for r in records[3:8])
    assert [(f.head["seq"], f.head["time"]) for f in frames_of(transport)] == [
        (seq, 1000.0 + seq) for seq in range(4, 9)
    ]


def test_replay_counts_what_it_wrote_as_delivered(journal: Path) -> None:
    append(journal, numbered(10))

    async def main() -> int:
        sub, _transport = subscriber()
        await replay(sub, journal, 0, 10)
        return sub.delivered

    assert asyncio.run(main()) == 10


def test_replay_is_framed_for_the_subscriber(journal: Path) -> None:
    records = append(journal, numbered(3))
    sent, transport = replayed(journal, 0, 3, framing=Framing.LENGTH_PREFIXED)
    assert sent == 3
    assert transport.data[:4] == (len(event_frame(records[0], Framing.BARE))).to_bytes(4, "big")
    assert seqs_of(transport, Framing.LENGTH_PREFIXED) == [1, 2, 3]


def test_replay_stops_at_the_journals_end(journal: Path) -> None:
    append(journal, numbered(10))
    sent, transport = replayed(journal, 6, 1_000)
    assert sent == 4
    assert seqs_of(transport) == [7, 8, 9, 10]


@pytest.mark.parametrize(("since", "until"), [(5, 5), (8, 5), (10, 20)])
def test_an_empty_range_writes_nothing(journal: Path, since: int, until: int) -> None:
    append(journal, numbered(10))
    sent, transport = replayed(journal, since, until)
    assert sent == 0
    assert transport.writes == []


def test_a_long_replay_is_read_and_written_a_chunk_at_a_time(journal: Path) -> None:
    total = 2 * CHUNK + 500
    append(journal, numbered(total))
    sent, transport = replayed(journal, 0, total)
    assert sent == total
    assert [len(frames_in(w)) for w in transport.writes] == [CHUNK, CHUNK, 500]
    assert seqs_of(transport) == list(range(1, total + 1))


def test_the_subscribers_matcher_filters_the_replay(journal: Path) -> None:
    append(journal, [("app/a", {}), ("other/b", {}), ("app/c", {}), ("job/done", {})])
    sent, transport = replayed(journal, 0, 4, matcher=tag_matcher("app/"))
    assert sent == 2
    assert [f.tag for f in frames_of(transport)] == ["app/a", "app/c"]
    assert seqs_of(transport) == [1, 3]


def test_a_single_pattern_is_applied_inside_the_journal(journal: Path) -> None:
    append(journal, [("app/a", {}), ("other/b", {}), ("app/c", {})])
    sent, transport = replayed(journal, 0, 3, pattern=("app/", MatchType.STARTSWITH))
    assert sent == 2
    assert seqs_of(transport) == [1, 3]


def test_the_matcher_applies_to_what_the_pattern_reads(journal: Path) -> None:
    append(journal, [("app/a", {}), ("app/b/done", {}), ("other/done", {})])
    sent, transport = replayed(
        journal,
        0,
        3,
        pattern=("app/", MatchType.STARTSWITH),
        matcher=tag_matcher("/done", MatchType.ENDSWITH),
    )
    assert sent == 1
    assert [f.tag for f in frames_of(transport)] == ["app/b/done"]


def test_a_filtered_replay_of_a_rare_tag_reaches_past_the_first_chunk(journal: Path) -> None:
    append(journal, [*numbered(CHUNK + 10, "noise"), ("rare/tag", {"n": 1}), *numbered(5, "noise")])
    sent, transport = replayed(
        journal,
        0,
        CHUNK + 16,
        pattern=("rare/", MatchType.STARTSWITH),
        matcher=tag_matcher("rare/"),
    )
    assert sent == 1
    assert seqs_of(transport) == [CHUNK + 11]


def test_a_closed_subscriber_gets_nothing(journal: Path) -> None:
    append(journal, numbered(10))

    async def main() -> tuple[int, FakeTransport]:
        sub, transport = subscriber()
        sub.close()
        return await replay(sub, journal, 0, 10), transport

    sent, transport = asyncio.run(main())
    assert sent == 0
    assert transport.writes == []


def test_a_replay_waits_for_its_reader_and_goes_on_when_it_reads(journal: Path) -> None:
    total = 2 * CHUNK + 500
    append(journal, numbered(total))

    async def main() -> tuple[int, FakeTransport]:
        # Each chunk fills the reader's buffer: the transport pauses it, and the
        # replay writes the next one only once the reader took it.
        sub, transport = subscriber(pause_after=1)
        task = asyncio.create_task(replay(sub, journal, 0, total))
        await wait_until_async(lambda: len(transport.writes) == 1, "the first chunk")
        for written in (2, 3):
            assert not task.done()
            transport.drain()
            sub.resume()
            await wait_until_async(
                functools.partial(writes_are, transport, written), f"{written} chunks written"
            )
        return await asyncio.wait_for(task, WAIT), transport

    sent, transport = asyncio.run(main())
    assert sent == total
    assert seqs_of(transport) == list(range(1, total + 1))


def test_a_replay_waiting_for_a_reader_that_goes_ends(journal: Path) -> None:
    """A reader that stops reading and goes: the replay waiting for it ends
    and writes nothing more (it once waited forever, holding its events)."""
    total = 2 * CHUNK + 500
    append(journal, numbered(total))

    async def main() -> tuple[int, FakeTransport]:
        sub, transport = subscriber(pause_after=1)
        task = asyncio.create_task(replay(sub, journal, 0, total))
        await wait_until_async(lambda: len(transport.writes) == 1, "the first chunk")
        sub.close()
        return await asyncio.wait_for(task, WAIT), transport

    _sent, transport = asyncio.run(main())
    assert len(transport.writes) == 1
    assert seqs_of(transport) == list(range(1, CHUNK + 1))


# -- gaps_in -------------------------------------------------------------------------------


def gap(first: int, last: int) -> tuple[str, dict[str, Any]]:
    """The notice the intake journals once the journal commits again."""
    return (JOURNAL_GAP_TAG, {"first": first, "last": last, "seconds": 1.5, "refused": 0})


@pytest.fixture
def gapped(journal: Path) -> Path:
    """Seqs 1-4 journaled, 5-8 delivered but not journaled, the notice at 9;
    then 10-14 journaled, 15-16 not, the notice at 17, and 18."""
    append(journal, numbered(4))
    with Journal.open(journal) as store:
        store.append(
            [JournalRecord(9, 1009.0, JOURNAL_GAP_TAG, pack_body(*gap(5, 8)))]
            + [
                JournalRecord(seq, 1000.0 + seq, "app/x", pack_body("app/x", {}))
                for seq in range(10, 15)
            ]
            + [JournalRecord(17, 1017.0, JOURNAL_GAP_TAG, pack_body(*gap(15, 16)))]
            + [JournalRecord(18, 1018.0, "app/x", pack_body("app/x", {}))]
        )
    return journal


@pytest.mark.parametrize(
    ("since", "until", "gaps"),
    [
        (0, 18, ((5, 8), (15, 16))),
        (4, 18, ((5, 8), (15, 16))),
        (6, 18, ((5, 8), (15, 16))),  # part of the first gap is after since
        (8, 18, ((15, 16),)),  # the first gap is all before since
        (12, 18, ((15, 16),)),
        (0, 4, ()),  # both gaps after until
        (0, 5, ((5, 8),)),
        (0, 15, ((5, 8), (15, 16))),
        (16, 18, ()),
        (18, 30, ()),
    ],
)
def test_gaps_in_names_the_unjournaled_ranges_meeting_the_replay(
    gapped: Path, since: int, until: int, gaps: tuple[tuple[int, int], ...]
) -> None:
    assert gaps_in(gapped, since, until) == gaps


def test_gaps_in_a_journal_without_gaps_is_empty(journal: Path) -> None:
    append(journal, numbered(10))
    assert gaps_in(journal, 0, 10) == ()


@pytest.mark.parametrize(
    "data",
    [
        {"first": 5},
        {"last": 8},
        {"first": "five", "last": 8},
        {"first": None, "last": 8},
        {"first": [5], "last": 8},
    ],
)
def test_a_malformed_gap_notice_is_ignored(journal: Path, data: dict[str, Any]) -> None:
    append(journal, numbered(4))
    append(journal, [(JOURNAL_GAP_TAG, data), gap(6, 6)])
    assert gaps_in(journal, 0, 10) == ((6, 6),)


def test_an_undecodable_gap_notice_is_ignored(journal: Path) -> None:
    append(journal, numbered(4))
    with Journal.open(journal) as store:
        store.append(
            [JournalRecord(5, 1005.0, JOURNAL_GAP_TAG, JOURNAL_GAP_TAG.encode() + b"\n\n\xc1")]
        )
    append(journal, [gap(2, 3)])
    assert gaps_in(journal, 0, 10) == ((2, 3),)


def test_only_the_gap_tag_itself_names_a_gap(journal: Path) -> None:
    """An event whose tag merely starts with the gap notice's tag is not one."""
    append(journal, [(JOURNAL_GAP_TAG + "s/report", {"first": 1, "last": 3}), gap(5, 6)])
    assert gaps_in(journal, 0, 10) == ((5, 6),)


# -- first_available -----------------------------------------------------------------------


def test_first_available_of_an_empty_journal_is_none(journal: Path) -> None:
    Journal.open(journal).close()
    assert first_available(journal) is None


def test_first_available_is_the_oldest_retained_seq(journal: Path) -> None:
    append(journal, numbered(10, "app/pad"))
    assert first_available(journal) == 1
    body_bytes = len(pack_body("app/pad", {"n": 0}))
    with Journal.open(journal, max_bytes=4 * body_bytes) as store:
        assert store.enforce_retention() == 6
    assert first_available(journal) == 7
    # A replay from before it starts there: what retention took is gone.
    sent, transport = replayed(journal, 2, 10)
    assert sent == 4
    assert seqs_of(transport) == [7, 8, 9, 10]


def test_a_gap_notice_of_another_numbering_is_not_a_gap_here(journal: Path) -> None:
    """Federation imports other buses' events, gap notices included: their
    seqs count in the other bus's epoch, not this journal's."""
    with Journal.open(journal) as store:
        epoch = store.claim_epoch()
    append(
        journal,
        [
            (JOURNAL_GAP_TAG, {"first": 1, "last": 2, "epoch": epoch + 1}),
            (JOURNAL_GAP_TAG, {"first": 4, "last": 5, "epoch": epoch}),
        ],
    )
    assert gaps_in(journal, 0, 10) == ((4, 5),)


def test_wait_indexed_returns_once_sqlite_holds_what_the_tail_took(journal: Path) -> None:
    async def main() -> None:
        with TailedWriter(journal) as writer:
            records = [
                JournalRecord(seq, 1.0, "app/event", pack_body("app/event", {"n": seq}))
                for seq in range(1, 201)
            ]
            assert writer.commit_inline(records)
            await wait_indexed(writer, 200)
            with Journal.open(journal, readonly=True) as store:
                assert [r.seq for r in store.read(since=0)] == list(range(1, 201))

    asyncio.run(main())


def test_wait_indexed_gives_up_after_its_timeout(
    journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        with TailedWriter(journal) as writer:
            # Seq 5 is never journaled (a gap while the journal failed).
            await asyncio.wait_for(wait_indexed(writer, 5, timeout=0.05), WAIT)

    asyncio.run(main())
    assert "replay up to seq 5 starts before the journal indexed it" in caplog.text

"""The journal read in the daemon's process: a read waits for a commit and
returns what follows the position, woken by the server's commit and index
listeners: memory holds what was journaled, SQLite is read up to what the
index was reported to show."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from saltbus import Config, Sender
from saltbus.cluster.feed import JournalFeed
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.server import Server
from saltbus.wire import pack_body

pytestmark = pytest.mark.timeout(120)
# Far longer than the test waits: only a commit's report can end a read in time.
NO_POLL = 600.0
WAIT = 30.0


def fire(config: Config, tags: list[str]) -> list[int]:
    with Sender(config) as sender:
        return [
            sender.fire(tag, {"n": n}, timeout=10.0, ack=True).seq or 0
            for n, tag in enumerate(tags)
        ]


def test_a_read_waits_for_a_commit_and_returns_what_follows_the_position(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server:
            assert server.journal_path is not None
            feed = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            server.commit_listeners.append(feed.committed)
            server.index_listeners.append(feed.indexed)
            try:
                start = server.intake.last_seq
                waiting = asyncio.create_task(feed.read(start, 2))
                await asyncio.sleep(0.2)
                assert not waiting.done()  # nothing after the position yet
                seqs = await asyncio.to_thread(fire, bus_config, ["feed/a", "feed/b", "feed/c"])
                first = await asyncio.wait_for(waiting, WAIT)
                assert [r.seq for r in first] == seqs[: len(first)]  # what had committed
                got = list(first)
                while len(got) < len(seqs):
                    got += await asyncio.wait_for(feed.read(got[-1].seq, 10), WAIT)
                assert [(r.seq, r.tag) for r in got] == list(
                    zip(seqs, ["feed/a", "feed/b", "feed/c"], strict=True)
                )
                limited = await asyncio.wait_for(feed.read(start, 2), WAIT)
                assert [r.seq for r in limited] == seqs[:2]
                assert feed.latest >= seqs[-1]
                assert await feed.epoch() == server.epoch
            finally:
                await feed.close()

    asyncio.run(main())


def test_an_index_report_from_another_thread_wakes_a_read(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server:
            assert server.journal_path is not None
            # Not a listener of the server: it learns of the commit from another thread only.
            feed = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            try:
                start = server.intake.last_seq
                waiting = asyncio.create_task(feed.read(start, 10))
                await asyncio.sleep(0.2)
                seqs = await asyncio.to_thread(fire, bus_config, ["feed/x"])
                assert not waiting.done()
                notifier = threading.Thread(target=feed.indexed, args=(seqs[-1],))
                notifier.start()
                notifier.join()
                records = await asyncio.wait_for(waiting, WAIT)
                assert [r.seq for r in records] == seqs
            finally:
                await feed.close()

    asyncio.run(main())


def test_read_announced_returns_what_commits_reported_without_waiting(bus_config: Config):
    async def main() -> None:
        async with Server(bus_config) as server:
            assert server.journal_path is not None
            feed = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            unannounced = JournalFeed(server.journal_path, poll_interval=NO_POLL)
            server.commit_listeners.append(feed.committed)
            try:
                start = server.intake.last_seq
                assert await asyncio.wait_for(feed.read_announced(start, 10), WAIT) == []
                seqs = await asyncio.to_thread(fire, bus_config, ["feed/1", "feed/2", "feed/3"])
                # An acknowledged fire is reported before it is acknowledged.
                records = await asyncio.wait_for(feed.read_announced(start, 10), WAIT)
                assert [r.seq for r in records] == seqs
                limited = await asyncio.wait_for(feed.read_announced(start, 2), WAIT)
                assert [r.seq for r in limited] == seqs[:2]
                assert await asyncio.wait_for(feed.read_announced(seqs[-1], 10), WAIT) == []
                # Committed, but never reported to this one: it does not look.
                assert await asyncio.wait_for(unannounced.read_announced(start, 10), WAIT) == []
            finally:
                await feed.close()
                await unannounced.close()

    asyncio.run(main())


def write_journal(path: Path, seqs: list[int]) -> list[JournalRecord]:
    records = [
        JournalRecord(seq, 1.0 + seq, f"feed/{seq}", pack_body(f"feed/{seq}", {})) for seq in seqs
    ]
    with Journal.open(path) as journal:
        journal.append(records)
    return records


def test_a_read_that_starts_where_the_kept_records_do_is_answered_from_memory(tmp_path: Path):
    async def main() -> None:
        records = write_journal(tmp_path / "j.sqlite3", [1, 2, 3, 4, 5])
        feed = JournalFeed(tmp_path / "j.sqlite3", poll_interval=NO_POLL)
        try:
            feed.committed(records[:3])
            feed.committed(records[3:])
            assert await feed.read(0, 2) == records[:2]
            assert await feed.read(2, 10) == records[2:]
            assert (feed.from_memory, feed.from_journal) == (5, 0)
            assert feed.latest == 0, "a journaled commit says nothing of SQLite"
        finally:
            await feed.close()

    asyncio.run(main())


def test_what_memory_lacks_is_read_from_the_journal(tmp_path: Path):
    """Behind the window, across a gap in the kept seqs, and after a read
    went back: each answer is exactly the journal's."""

    async def main() -> None:
        records = write_journal(tmp_path / "j.sqlite3", list(range(1, 11)))
        feed = JournalFeed(tmp_path / "j.sqlite3", poll_interval=NO_POLL, kept_records=4)
        try:
            # Seq 7 was committed but never reported; only 4 records are kept.
            feed.committed(records[:6])
            feed.committed(records[7:])
            feed.indexed(10)
            assert feed.kept == 4  # 6, 8, 9, 10
            assert [r.seq for r in await feed.read(0, 3)] == [1, 2, 3]  # behind the window
            assert feed.from_memory == 0
            assert [r.seq for r in await feed.read(6, 10)] == [7, 8, 9, 10]  # at the gap
            assert [r.seq for r in await feed.read(7, 10)] == [8, 9, 10]  # right after it
            assert feed.from_memory == 3
            # A read that goes back (a batch sent again) finds the journal's records.
            assert [r.seq for r in await feed.read(4, 2)] == [5, 6]
            assert (feed.from_memory, feed.from_journal) == (3, 9)
        finally:
            await feed.close()

    asyncio.run(main())


def test_the_kept_window_is_bounded_by_bytes_too(tmp_path: Path):
    async def main() -> None:
        records = write_journal(tmp_path / "j.sqlite3", [1, 2, 3])
        size = len(records[0].body)
        feed = JournalFeed(tmp_path / "j.sqlite3", poll_interval=NO_POLL, kept_bytes=2 * size)
        try:
            feed.committed(records)
            feed.indexed(3)
            assert feed.kept == 2
            assert [r.seq for r in await feed.read(0, 10)] == [1, 2, 3]  # from the journal
            assert [r.seq for r in await feed.read(1, 10)] == [2, 3]  # kept
            assert feed.from_memory == 2
        finally:
            await feed.close()

    asyncio.run(main())


def test_a_commit_reported_from_another_thread_is_left_to_the_journal(tmp_path: Path):
    async def main() -> None:
        records = write_journal(tmp_path / "j.sqlite3", [1, 2])
        feed = JournalFeed(tmp_path / "j.sqlite3", poll_interval=NO_POLL)
        try:
            waiting = asyncio.create_task(feed.read(2, 10))  # binds the feed to this loop
            await asyncio.sleep(0.05)
            more = write_journal(tmp_path / "j.sqlite3", [3])
            reporter = threading.Thread(target=feed.committed, args=(more,))
            reporter.start()
            reporter.join()
            await asyncio.sleep(0.05)
            assert not waiting.done() and feed.kept == 0  # memory is the loop's only
            feed.indexed(3)
            assert await asyncio.wait_for(waiting, WAIT) == more
            assert feed.from_journal == 1
            assert records  # written before the feed read
        finally:
            await feed.close()

    asyncio.run(main())


def test_a_journaled_commit_is_read_from_memory_before_sqlite_shows_it(tmp_path: Path):
    """The tail has it, SQLite not yet: memory answers; what memory cannot
    answer waits for the index's report rather than reading SQLite for it."""

    async def main() -> None:
        path = tmp_path / "j.sqlite3"
        first = write_journal(path, [1])
        feed = JournalFeed(path, poll_interval=NO_POLL, kept_records=2)
        try:
            assert await feed.read(0, 10) == first  # the first read looks
            pending = [
                JournalRecord(seq, 1.0 + seq, f"feed/{seq}", pack_body(f"feed/{seq}", {}))
                for seq in (2, 3, 4)
            ]
            feed.committed(pending)  # in the tail only: 3 and 4 are kept
            assert [r.seq for r in await feed.read(2, 10)] == [3, 4]
            waiting = asyncio.create_task(feed.read(1, 10))  # 2 is behind the window
            await asyncio.sleep(0.1)
            assert not waiting.done(), "SQLite was read before it was said to show seq 2"
            with Journal.open(path) as journal:
                journal.append(pending)
            feed.indexed(4)
            assert [r.seq for r in await asyncio.wait_for(waiting, WAIT)] == [2, 3, 4]
            assert (feed.from_memory, feed.from_journal) == (2, 4)
        finally:
            await feed.close()

    asyncio.run(main())


def test_a_commit_not_yet_reported_is_left_to_its_report(tmp_path: Path):
    """SQLite shows a commit before the loop is told of it: within the poll
    interval a read waits for the report and takes it from memory; a
    commit never reported is found by the next look at the journal."""

    async def main() -> None:
        path = tmp_path / "j.sqlite3"
        first = write_journal(path, [1])
        feed = JournalFeed(path, poll_interval=0.5)
        try:
            assert await feed.read(0, 10) == first  # the first read looks
            second = write_journal(path, [2])
            waiting = asyncio.create_task(feed.read(1, 10))
            await asyncio.sleep(0.1)
            assert not waiting.done()  # not reported, and looked at just now
            feed.committed(second)
            assert await asyncio.wait_for(waiting, WAIT) == second
            assert (feed.from_memory, feed.from_journal) == (1, 1)
            third = write_journal(path, [3])  # never reported
            assert await asyncio.wait_for(feed.read(2, 10), WAIT) == third
            assert feed.from_journal == 2
        finally:
            await feed.close()

    asyncio.run(main())

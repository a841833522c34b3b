"""The default journal (saltbus.journal.tailed): the tail file in front of
SQLite, on real files: what a commit makes durable and when SQLite has it,
what a start finds in the tail, and SQLite failing behind the tail on a full
disk."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from saltbus.errors import JournalError, JournalWriteError
from saltbus.journal.records import JournalRecord
from saltbus.journal.store import Journal
from saltbus.journal.tail import HEADER_SIZE, TailDamagedError, decode, encode, tail_path
from saltbus.journal.tailed import TailedWriter
from tests.disk_support import fill, small_disk
from tests.waiting import wait_until

WAIT = 10.0


def records(first: int, count: int, size: int = 8) -> list[JournalRecord]:
    return [
        JournalRecord(seq, float(seq), "app/evt", b"app/evt\n\n" + b"x" * size)
        for seq in range(first, first + count)
    ]


def stored(path: Path) -> list[int]:
    with Journal.open(path, readonly=True) as journal:
        return [r.seq for r in journal.read(since=0)]


class Indexed:
    """A when_indexed callback that records being called (from any thread)."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def __call__(self) -> None:
        self.done.set()


class Callbacks:
    def __init__(self) -> None:
        self.committed: list[list[int]] = []
        self.failed: list[tuple[list[int], JournalError]] = []
        self.called = threading.Event()

    def on_committed(self, batch: Sequence[JournalRecord]) -> None:
        self.committed.append([r.seq for r in batch])
        self.called.set()

    def on_failed(self, batch: Sequence[JournalRecord], error: JournalError) -> None:
        self.failed.append(([r.seq for r in batch], error))
        self.called.set()


def held(journal: Path) -> int:
    """Bytes of frames the journal's tail holds (0 for no file or an empty one)."""
    path = tail_path(journal)
    data = path.read_bytes() if path.exists() else b""
    return decode(data, path).end - HEADER_SIZE if data else 0


def test_a_commit_is_in_the_tail_at_once_and_in_sqlite_behind(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    with TailedWriter(path) as writer:
        assert writer.last_seq == 0
        assert writer.commit_inline(records(1, 3))
        assert writer.last_seq == 3
        assert held(path) > 0
        indexed = Indexed()
        if not writer.when_indexed(3, indexed):
            assert indexed.done.wait(WAIT)
        assert writer.indexed_seq == 3
        assert stored(path) == [1, 2, 3]
        assert writer.when_indexed(2, Indexed()), "an indexed seq is answered at once"
        with pytest.raises(JournalError, match="not after"):
            writer.commit_inline(records(3, 1))
    assert tail_path(path).stat().st_size == 0, "closing empties an indexed tail"


def test_a_deferred_index_waits_for_the_next_call_and_keeps_the_order(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    with TailedWriter(path) as writer:
        assert writer.commit_inline(records(1, 2), defer_index=True)
        assert writer.commit_inline(records(3, 2), defer_index=True)
        assert writer.last_seq == 4, "durable in the tail at once"
        assert writer.indexed_seq == 0, "not handed to SQLite's thread before the next call"
        indexed = Indexed()
        if not writer.when_indexed(4, indexed):
            assert indexed.done.wait(WAIT)
        assert stored(path) == [1, 2, 3, 4]
        assert writer.commit_inline(records(5, 1), defer_index=True)
    assert stored(path) == [1, 2, 3, 4, 5], "closing hands over what was deferred"


def test_submitted_batches_go_to_sqlite_before_their_callback(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    with TailedWriter(path) as writer:
        assert writer.commit_inline(records(1, 2))
        calls = Callbacks()
        writer.submit(records(3, 2), calls.on_committed, on_failed=calls.on_failed)
        assert calls.called.wait(WAIT)
        assert calls.committed == [[3, 4]] and writer.indexed_seq == 4
        assert stored(path) == [1, 2, 3, 4]


def test_the_tail_is_emptied_once_indexed(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    with TailedWriter(path, reset_bytes=4096) as writer:
        seq = 1
        for _ in range(40):
            assert writer.commit_inline(records(seq, 4, size=200))
            seq += 4
            indexed = Indexed()
            if not writer.when_indexed(seq - 1, indexed):
                assert indexed.done.wait(WAIT)
        assert held(path) < 4096 + 4 * 300
        assert stored(path) == list(range(1, seq))


def test_a_start_indexes_what_the_tail_holds_beyond_sqlite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bus.sqlite3"
    with Journal.open(path) as journal:
        journal.append(records(1, 3))
    # What a killed publisher leaves: frames SQLite has and frames it lacks.
    tail_path(path).write_bytes(encode(records(2, 5)))
    writer = TailedWriter(path)
    assert writer.start() == 6
    try:
        assert writer.recovered == 3
        assert "indexed 3 events (seqs 4 to 6) from its tail" in caplog.text
        assert stored(path) == [1, 2, 3, 4, 5, 6]
        assert held(path) == 0
        assert writer.commit_inline(records(7, 1))
    finally:
        writer.close()
    assert stored(path) == list(range(1, 8))


def test_a_damaged_tail_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    data = bytearray(encode(records(1, 4)))
    data[20] ^= 0xFF
    tail_path(path).write_bytes(bytes(data))
    writer = TailedWriter(path)
    with pytest.raises(TailDamagedError, match="at its start"):
        writer.start()
    writer.close()
    assert tail_path(path).read_bytes() == bytes(data)


def test_sqlite_failing_behind_the_tail_holds_commits_and_loses_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path, 4) as disk:
        path = disk / "bus.sqlite3"
        writer = TailedWriter(path)
        writer.start()
        try:
            assert writer.commit_inline(records(1, 1))
            wait_until(lambda: writer.indexed_seq == 1, "the first event indexed", WAIT)
            filler = fill(disk, leave=0)
            # The tail's page has room for small frames; SQLite needs new pages.
            seq = 2
            failure: JournalWriteError | None = None
            for _ in range(2000):
                try:
                    assert writer.commit_inline(records(seq, 1, size=64))
                except JournalWriteError as exc:
                    failure = exc
                    break
                seq += 1
                indexed = Indexed()
                if not writer.when_indexed(seq - 1, indexed):
                    indexed.done.wait(0.5)
            assert failure is not None and failure.reason == "disk full"
            delivered = seq - 1  # what commit_inline took: the publisher delivered it
            assert writer.last_seq == delivered
            # SQLite failed behind the tail: some of what was delivered is not in it yet.
            assert writer.indexed_seq < delivered
            late = Indexed()
            assert not writer.when_indexed(delivered, late)

            # A batch that is no probe is refused while SQLite fails.
            calls = Callbacks()
            writer.submit(records(delivered + 1, 1), calls.on_committed, on_failed=calls.on_failed)
            assert calls.failed and not calls.committed
            # The writer tries what SQLite lacks again by itself once the disk has room.
            filler.unlink()
            assert late.done.wait(WAIT)
            assert stored(path) == list(range(1, delivered + 1))
            calls = Callbacks()
            writer.submit(
                records(delivered + 1, 2),
                calls.on_committed,
                on_failed=calls.on_failed,
                probe=True,
            )
            assert calls.called.wait(WAIT)
            assert calls.committed == [[delivered + 1, delivered + 2]], calls.failed
            assert writer.commit_inline(records(delivered + 3, 1))
        finally:
            writer.close()
        assert stored(path) == list(range(1, delivered + 4))

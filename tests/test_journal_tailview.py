"""The journal's tail as read-only readers see it (saltbus.journal.tailview)."""

from __future__ import annotations

import os
from pathlib import Path

from saltbus.journal.tail import encode, tail_path
from saltbus.journal.tailview import read_tail
from tests.journal_support import event


def test_no_tail_file_is_none(tmp_path: Path) -> None:
    assert read_tail(tmp_path / "bus.sqlite3") is None
    assert not tail_path(tmp_path / "bus.sqlite3").exists(), "a reader makes no file"


def test_whole_frames_and_a_torn_last_one_left_as_they_are(tmp_path: Path) -> None:
    journal = tmp_path / "bus.sqlite3"
    frames = encode([event(seq) for seq in range(5, 10)])
    torn = encode([event(10)])[:-7]
    tail_path(journal).write_bytes(frames + torn)
    before = os.stat(tail_path(journal))
    view = read_tail(journal)
    assert view is not None
    assert [r.seq for r in view.records] == [5, 6, 7, 8, 9]
    assert (view.first_seq, view.last_seq) == (5, 9)
    assert view.torn == len(torn) and view.damage is None
    assert [r.seq for r in view.after(7)] == [8, 9]
    assert view.records[0] == event(5)
    after = os.stat(tail_path(journal))
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_damaged_frame_keeps_the_records_before_it(tmp_path: Path) -> None:
    journal = tmp_path / "bus.sqlite3"
    good = encode([event(seq) for seq in range(1, 4)])
    tail_path(journal).write_bytes(good + b"\xee" * 30 + encode([event(9)]))
    view = read_tail(journal)
    assert view is not None
    assert [r.seq for r in view.records] == [1, 2, 3]
    assert view.damage is not None
    assert (view.damage.offset, view.damage.after_seq) == (len(good), 3)
    assert view.torn == 0

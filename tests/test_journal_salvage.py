"""Reading around damaged pages (saltbus.journal.salvage), on real damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltbus.journal.salvage import (
    LostRanges,
    connect_readonly,
    events,
    inspect,
    raw_reader,
    read_around,
)
from saltbus.journal.tail import encode, tail_path
from tests.journal_support import (
    PAGE,
    add_reactor_state,
    build_journal,
    event,
    events_on_pages,
    middle_leaves,
    overwrite_pages,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "master_event-0123456789ab.sqlite3"


def test_lost_ranges_merge_and_subtract() -> None:
    lost = LostRanges()
    lost.add(10, 12)
    lost.add(20, 20)
    lost.add(13, 15)  # touches 10-12
    lost.add(5, 30)  # covers everything so far
    lost.add(40, 41)
    assert lost.ranges == [(5, 30), (40, 41)]
    assert lost.describe() == "5-30, 40-41"
    assert lost.count() == 28
    assert lost.covers(30) and not lost.covers(31)
    assert lost.without([5, 6, 17, 41]).ranges == [(7, 16), (18, 30), (40, 40)]
    assert not LostRanges()


def test_read_around_reads_everything_but_the_damaged_pages(path: Path) -> None:
    records = build_journal(path, 3000)
    pages = middle_leaves(path)
    damaged = events_on_pages(path, pages, records)
    overwrite_pages(path, pages)
    conn = connect_readonly(path)
    try:
        lost = LostRanges()
        read = list(read_around(raw_reader(conn, path), 0, 3000, lost, chunk=500))
    finally:
        conn.close()
    assert [r.seq for r in read] == [r.seq for r in records if r.seq not in damaged]
    assert read == [r for r in records if r.seq not in damaged]
    assert lost.ranges == [(min(damaged), max(damaged))]


def test_a_leaf_that_reads_as_empty_is_found_by_the_count(path: Path) -> None:
    # A leaf whose cell count was zeroed reads without any error: its events
    # are missing all the same, and the journal's running count says so.
    records = build_journal(path, 3000)
    (page,) = middle_leaves(path, 1)
    missing = events_on_pages(path, [page], records)
    with open(path, "r+b") as file:
        file.seek((page - 1) * PAGE + 3)
        file.write(b"\x00\x00")
    conn = connect_readonly(path)
    try:
        salvage = inspect(path, conn)
        found = [r.seq for r in events(conn, salvage)]
    finally:
        conn.close()
    assert set(found) == {r.seq for r in records} - missing
    assert salvage.lost.ranges == [(min(missing), max(missing))]
    assert any("cannot be read" in problem for problem in salvage.problems)


def test_inspect_reads_meta_and_cursors_of_a_healthy_journal(path: Path) -> None:
    build_journal(path, 30, path.parent)
    salvage = inspect(path)
    assert salvage.healthy and salvage.readable
    assert (salvage.last_seq, salvage.count) == (30, 30)
    assert salvage.epoch is not None and salvage.sock_dir == str(path.parent.resolve())
    assert salvage.cursors is not None and salvage.cursors["reader"][0] == 10


def test_inspect_reads_the_tail_and_the_reactor_state(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    build_journal(path, 40)
    add_reactor_state(path, groups=4)
    tail_path(path).write_bytes(encode([event(seq) for seq in range(39, 45)]))
    salvage = inspect(path)
    assert salvage.healthy, salvage.problems
    assert [r.seq for r in salvage.unindexed()] == [41, 42, 43, 44]
    assert salvage.states is not None
    assert [(s.label, s.rows, s.problem) for s in salvage.states] == [
        ("the rules' windows and counters", 5, None),
        ("the rules' unfinished firings", 1, None),
        ("the reactor's open jobs", 2, None),
    ]


def test_inspect_names_a_damaged_tail_as_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    build_journal(path, 40)
    good = encode([event(41)])
    tail_path(path).write_bytes(good + b"\xee" * 20 + encode([event(50)]))
    salvage = inspect(path)
    assert salvage.problems == [
        f"has a tail ({tail_path(path)}) damaged at byte {len(good)} (after seq 41): "
        "the events it holds past that point cannot be read"
    ]
    assert [r.seq for r in salvage.unindexed()] == [41]

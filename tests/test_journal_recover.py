"""Rebuilding a damaged journal (saltbus.journal.recover), in process on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saltbus.journal import Journal, JournalRecord
from saltbus.journal.recover import damaged_name, recover
from saltbus.journal.salvage import connect_readonly, events, inspect
from saltbus.journal.tail import encode, tail_path
from saltbus.reactor.multi.store import RuleStateStore
from tests.journal_support import (
    CURSOR,
    PAGE,
    TABLE_LEAF,
    add_reactor_state,
    build_journal,
    event,
    events_on_pages,
    interior_page,
    overwrite_pages,
    page_types,
    seqs,
    table_leaves,
    table_rows,
)

STAMP = "20261203T000000Z"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "master_event-0123456789ab.sqlite3"


def epoch(path: Path) -> int | None:
    with Journal.open(path, readonly=True) as journal:
        return journal.epoch()


def test_leaves_under_a_damaged_interior_page_are_all_kept(path: Path) -> None:
    records = build_journal(path, 30_000)
    before = epoch(path)
    overwrite_pages(path, [interior_page(path)])
    original = path.read_bytes()
    # Through SQLite, the leaves below that page cannot be reached at all.
    conn = connect_readonly(path)
    try:
        salvage = inspect(path, conn)
        assert len(list(events(conn, salvage))) < len(records) - 100
    finally:
        conn.close()
    done = recover(path, STAMP)
    assert done.kept == len(records) and done.lost == 0 and not done.salvage.lost
    assert done.epoch_kept and epoch(path) == before
    assert done.cursors_kept == 1
    assert seqs(path) == [r.seq for r in records]
    with Journal.open(path, readonly=True) as journal:
        assert journal.get_cursor(CURSOR) == 10_000
        assert journal.stats().count == len(records)
    # The damaged file is kept aside as it was, never written to.
    assert done.aside == damaged_name(path, STAMP)
    assert done.aside.read_bytes() == original


def test_a_damaged_meta_gives_a_new_epoch(path: Path) -> None:
    records = build_journal(path, 2000)
    before = epoch(path)
    conn = sqlite3.connect(path)
    (meta_page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()
    conn.close()
    overwrite_pages(path, [meta_page])
    done = recover(path, STAMP)
    assert not done.epoch_kept and done.lost is None
    assert epoch(path) not in (None, before)
    # The last seq is what the events say: a publisher goes on after it.
    with Journal.open(path, readonly=True) as journal:
        assert journal.last_seq() == len(records)
    assert seqs(path) == [r.seq for r in records]


# -- the tail and the reactor's state ------------------------------------------------


def leaves_holding_only(path: Path, wanted: set[int], records: list[JournalRecord]) -> list[int]:
    """The events table's leaf pages whose events are all in ``wanted``."""
    data = path.read_bytes()
    found = []
    for number, kind in page_types(path).items():
        if kind != TABLE_LEAF:
            continue
        chunk = data[(number - 1) * PAGE : number * PAGE]
        on_page = {r.seq for r in records if r.body in chunk}
        if on_page and on_page <= wanted:
            found.append(number)
    return found


def test_the_tail_fills_damaged_pages_and_adds_what_sqlite_never_had(path: Path) -> None:
    records = build_journal(path, 3000)
    before = epoch(path)
    # A killed publisher's tail: the last 100 events SQLite has, 100 it never
    # indexed, and a last frame cut short.
    tail = [event(seq) for seq in range(2901, 3101)]
    tail_path(path).write_bytes(encode(tail) + encode([event(3101)])[:-9])
    recent = leaves_holding_only(path, set(range(2901, 3001)), records)
    assert recent, "no leaf page holds only recent events"
    damaged = events_on_pages(path, recent, records)
    overwrite_pages(path, recent)
    done = recover(path, STAMP)
    # Every seq once, no gap: from SQLite, from the tail for the damaged pages
    # and for what SQLite never had.
    assert seqs(path) == list(range(1, 3101))
    assert done.from_tail == len(damaged) + 100
    assert done.kept == 3100 and not done.salvage.lost and done.lost == 0
    assert done.epoch_kept and epoch(path) == before
    with Journal.open(path, readonly=True) as journal:
        assert journal.last_seq() == 3100
        assert journal.read(since=3049, until=3050) == [event(3050)]
        assert journal.stats().count == 3100
    # The tail goes aside with the damaged file, as it was.
    assert not tail_path(path).exists()
    assert tail_path(done.aside).read_bytes()[: len(encode(tail))] == encode(tail)


def test_a_damaged_tail_keeps_the_frames_before_it_and_changes_the_epoch(path: Path) -> None:
    build_journal(path, 500)
    before = epoch(path)
    tail_path(path).write_bytes(
        encode([event(seq) for seq in range(450, 551)]) + b"\xee" * 64 + encode([event(560)])
    )
    salvage = inspect(path)
    assert any(
        "has a tail" in problem and "damaged at byte" in problem for problem in salvage.problems
    )
    done = recover(path, STAMP)
    assert seqs(path) == list(range(1, 551))
    assert done.from_tail == 50
    # Seqs past the damage were handed out and no file says how far: a new
    # numbering, so that no reader takes a new event for one it had.
    assert not done.epoch_kept and epoch(path) not in (None, before)
    assert done.lost is None


def test_the_readable_reactor_state_is_copied_and_a_damaged_set_left_out(path: Path) -> None:
    records = build_journal(path, 1000)
    rows = add_reactor_state(path)
    overwrite_pages(path, table_leaves(path, "reactor_rule_groups")[1:3])
    done = recover(path, STAMP)
    assert seqs(path) == [r.seq for r in records], "the events are all kept"
    assert [state.label for state in done.states_kept] == [
        "the rules' unfinished firings",
        "the reactor's open jobs",
    ]
    assert [state.label for state in done.states_lost] == ["the rules' windows and counters"]
    for table in ("reactor_rule_firings", "reactor_open_jobs", "reactor_open_jobs_seq"):
        assert table_rows(path, table) == rows[table]
    assert table_rows(path, "reactor_rule_groups") is None
    assert table_rows(path, "reactor_rule_meta") is None
    # The reactor's store reads the recovered file: no windows (a first start
    # for them), its unfinished firing kept.
    store = RuleStateStore(path, "r1")
    try:
        assert store.load() == (None, None, [])
        assert store.load_firings() == [("f1", "tag", "{}")]
    finally:
        store.close()


def test_a_healthy_journal_rebuilt_keeps_its_whole_state(path: Path) -> None:
    build_journal(path, 200)
    rows = add_reactor_state(path)
    done = recover(path, STAMP)
    assert not done.states_lost and len(done.states_kept) == 3
    for table, count in rows.items():
        assert table_rows(path, table) == count

"""Rebuilding a damaged journal (saltbus.journal.recover), in process on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saltbus.journal import Journal
from saltbus.journal.recover import damaged_name, recover
from saltbus.journal.salvage import connect_readonly, events, inspect
from tests.journal_support import (
    CURSOR,
    build_journal,
    interior_page,
    overwrite_pages,
    seqs,
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

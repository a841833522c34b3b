"""Finding events page by page (saltbus.journal.pages), without SQLite's B-tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltbus.journal import Journal, JournalRecord
from saltbus.journal.pages import scan
from saltbus.wire import pack_body
from tests.journal_support import build_journal, random_bytes_at


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "master_event-0123456789ab.sqlite3"


def found(path: Path) -> dict[int, JournalRecord]:
    return {record.seq: record for record in scan(path, lambda _seq: True)}


def test_every_event_is_found_with_overflow_pages_and_whole_second_stamps(path: Path) -> None:
    records = []
    for seq in range(1, 301):
        tag = f"big/{seq}"
        size = 20_000 if seq % 50 == 0 else 100  # bodies spanning overflow pages
        stamp = 1000.0 if seq % 2 else 1000.25  # SQLite stores 1000.0 as an integer
        records.append(JournalRecord(seq, stamp, tag, pack_body(tag, {"x": "y" * size})))
    with Journal.open(path) as journal:
        journal.append(records)
    assert found(path) == {r.seq: r for r in records}


def test_only_the_wanted_seqs_are_returned(path: Path) -> None:
    build_journal(path, 500)
    assert sorted({r.seq for r in scan(path, lambda seq: 100 <= seq < 110)}) == list(
        range(100, 110)
    )


def test_events_are_found_when_the_header_is_overwritten(path: Path) -> None:
    records = build_journal(path, 1000)
    random_bytes_at(path, 0, 100)
    assert found(path) == {r.seq: r for r in records}


def test_pages_on_the_freelist_are_not_read(path: Path) -> None:
    # Retention frees the pages of deleted events; their bytes stay on disk,
    # and must not bring the events back.
    build_journal(path, 3000)
    with Journal.open(path, max_bytes=100 * 150) as journal:
        journal.enforce_retention()
        kept = {r.seq for r in journal.iter_read()}
    assert len(kept) < 500
    assert set(found(path)) == kept

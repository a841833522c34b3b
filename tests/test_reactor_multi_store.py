"""The rules' state in a real journal file: written in batches, read back,
and the journal's receive times read for the rules' clock; the journal's own
tables are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltbus.errors import JournalError
from saltbus.journal import Journal
from saltbus.reactor.multi.ruleset import Change
from saltbus.reactor.multi.store import TIMES_CHUNK, RuleStateStore
from tests.journal_support import build_journal


def test_state_is_saved_and_loaded_per_reactor(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    records = build_journal(path, 10)
    store = RuleStateStore(path, "reactor")
    other = RuleStateStore(path, "second")
    try:
        assert store.load() == (None, None, [])
        store.save(
            42, 7, [Change("r", "fp", '"a"', '{"x": 1}'), Change("r", "fp", '"b"', "{}")], []
        )
        store.save(42, 9, [Change("r", "fp", '"b"', None)], [])  # b is gone
        other.save(1, 3, [Change("q", "fp2", "null", "{}")], [])
        assert store.load() == (42, 9, [("r", "fp", '"a"', '{"x": 1}')])
        store.save(42, 10, [], ["r"])  # a dropped rule: all its groups go
        assert store.load() == (42, 10, [])
        store.save(42, 11, [Change("s", "f", "1", "{}")], [], everything=True)
        assert store.load() == (42, 11, [("s", "f", "1", "{}")])
        assert other.load() == (1, 3, [("q", "fp2", "null", "{}")])
        assert store.time_of(4) == records[3].time
        assert store.time_of(99) is None
    finally:
        store.close()
        other.close()
    with Journal.open(path) as journal:  # the journal reads as before
        assert journal.last_seq() == 10 and len(journal.read(since=0)) == 10


def test_unfinished_firings_are_saved_and_deleted_per_reactor(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    build_journal(path, 1)
    store = RuleStateStore(path, "reactor")
    other = RuleStateStore(path, "second")
    try:
        assert store.load_firings() == []
        a, b = ("f-1", "saltbus/rule/x", '{"n": 1}'), ("f-2", "saltbus/rule/y", "{}")
        # The group that fired goes in the transaction that keeps its firing.
        store.save(1, 1, [Change("r", "fp", '"k"', "{}")], [], firings=[a, b])
        store.save(1, 1, [Change("r", "fp", '"k"', None)], [], firings=[a], finished=["f-2"])
        other.save(1, 1, [], [], firings=[("g-1", "saltbus/rule/z", "{}")])
        assert store.load() == (1, 1, [])
        assert store.load_firings() == [a]
        c = ("f-3", "saltbus/rule/x", "{}")
        store.save(1, 1, [], [], everything=True, firings=[c])  # what was saved goes
        assert store.load_firings() == [c]
        assert other.load_firings() == [("g-1", "saltbus/rule/z", "{}")]
    finally:
        store.close()
        other.close()


def test_times_are_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    records = build_journal(path, TIMES_CHUNK + 10)
    store = RuleStateStore(path, "reactor")
    try:
        assert [store.time_of(s) for s in (1, TIMES_CHUNK + 5)] == [
            records[0].time,
            records[TIMES_CHUNK + 4].time,
        ]
    finally:
        store.close()


def test_an_unusable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "not-a-journal"
    path.write_bytes(b"x" * 4096)
    with pytest.raises(JournalError, match=r"cannot keep the rules' state in .*not-a-journal"):
        RuleStateStore(path, "reactor")

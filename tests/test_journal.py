"""The journal: SQLite store, group-committing writer, and file locations.

Every test uses real SQLite files under ``tmp_path``. Threads are
synchronised with events and queues, never with sleeps, and every wait has
a bound.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from saltbus.errors import ConfigError, JournalError
from saltbus.event import MatchType, tag_matcher
from saltbus.journal import (
    Journal,
    JournalRecord,
    JournalWriter,
    default_data_dir,
    journal_path,
)
from saltbus.journal import query as journal_query
from saltbus.journal import schema as journal_schema
from saltbus.wire import pack_body

WAIT = 30.0  # seconds: the bound on every wait for another thread or process

TAGS = [
    "salt/auth",
    "salt/job/20260101/new",
    "salt/job/20260101/ret/web1",
    "salt/job/20260102/ret/db1",
    "salt/minion/web1/start",
    "salt/key",
    "saltbus/subscriber/lagged",
    "custom/ret",
    "Salt/auth",
    "salt/émoji/☃",
]


def record(seq: int, tag: str = "salt/auth", time: float | None = None) -> JournalRecord:
    return JournalRecord(
        seq, 1_000.0 + seq if time is None else time, tag, pack_body(tag, {"n": seq})
    )


def records(first: int, last: int, tag: str = "salt/auth") -> list[JournalRecord]:
    return [record(seq, tag) for seq in range(first, last + 1)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bus.sqlite3"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal.open(path) as opened:
        yield opened


@pytest.fixture
def mixed(journal: Journal) -> list[JournalRecord]:
    """Five rounds of every tag in TAGS, seq 1..50, time 1001..1050."""
    stored = [record(seq, TAGS[(seq - 1) % len(TAGS)]) for seq in range(1, 51)]
    journal.append(stored)
    return stored


def seqs(found: Sequence[JournalRecord]) -> list[int]:
    return [each.seq for each in found]


# -- the store ----------------------------------------------------------------


def test_append_read_round_trip(journal: Journal) -> None:
    stored = [record(1, "salt/auth"), record(2, "salt/job/1/new"), record(5, "salt/key")]
    journal.append(stored)
    assert journal.read() == stored
    assert journal.last_seq() == 5
    assert journal.first_seq() == 1
    stats = journal.stats()
    assert (stats.first_seq, stats.last_seq, stats.count) == (1, 5, 3)
    assert stats.bytes == sum(len(each.body) for each in stored)
    assert stats.path == journal.path


def test_new_journal_is_empty(journal: Journal) -> None:
    assert journal.last_seq() == 0
    assert journal.first_seq() is None
    assert journal.read() == []
    journal.append([])
    assert journal.stats().count == 0


@pytest.mark.parametrize(
    "bad",
    [
        [record(3), record(3)],
        [record(4), record(2)],
        [record(1)],  # not after last_seq (2)
        [record(2), record(9)],  # starts at last_seq
    ],
)
def test_append_rejects_seqs_out_of_order_and_stores_nothing(
    journal: Journal, bad: list[JournalRecord]
) -> None:
    journal.append(records(1, 2))
    with pytest.raises(JournalError):
        journal.append(bad)
    assert seqs(journal.read()) == [1, 2]
    assert journal.last_seq() == 2
    journal.append([record(3)])  # the journal is still usable
    assert journal.last_seq() == 3


def test_append_rejects_a_tag_sqlite_cannot_store(journal: Journal) -> None:
    with pytest.raises(JournalError):
        journal.append([JournalRecord(1, 1.0, "bad\udcfftag", b"x")])
    assert journal.read() == []
    assert journal.last_seq() == 0


def test_append_of_many_rows_uses_every_statement_size(journal: Journal) -> None:
    # 3,000 = 2 x 1,024 + 512 + 256 + 128 + 64 + 16 + 8: full and partial statements.
    stored = [record(seq, TAGS[seq % len(TAGS)]) for seq in range(1, 3001)]
    journal.append(stored)
    assert journal.read() == stored
    assert journal.stats().bytes == sum(len(each.body) for each in stored)


def test_read_since_until_limit(journal: Journal, mixed: list[JournalRecord]) -> None:
    assert seqs(journal.read(since=45)) == [46, 47, 48, 49, 50]
    assert seqs(journal.read(since=10, until=13)) == [11, 12, 13]
    assert seqs(journal.read(since=10, limit=2)) == [11, 12]
    assert seqs(journal.read(until=3)) == [1, 2, 3]
    assert journal.read(limit=0) == []
    assert journal.read(since=50) == []
    assert journal.read(since=20, until=10) == []
    with pytest.raises(JournalError):
        journal.read(limit=-1)


CASES = [
    (MatchType.STARTSWITH, "salt/job"),
    (MatchType.STARTSWITH, "salt/"),
    (MatchType.STARTSWITH, "salt"),
    (MatchType.STARTSWITH, "salt/émoji/"),
    (MatchType.STARTSWITH, "nothing"),
    (MatchType.ENDSWITH, "/ret"),
    (MatchType.ENDSWITH, "web1"),
    (MatchType.FIND, "job/2026010"),
    (MatchType.FIND, "ret"),
    (MatchType.REGEX, r"salt/job/\d+/ret"),
    (MatchType.REGEX, "auth"),  # anchored at the start, as in Salt
    (MatchType.FNMATCH, "salt/*/web1*"),
    (MatchType.FNMATCH, "*/ret"),
    (MatchType.FNMATCH, "salt/auth"),
]


@pytest.mark.parametrize(("match_type", "pattern"), CASES)
@pytest.mark.parametrize("probe_limit", [1, 1_000_000], ids=["scan-plan", "index-plan"])
def test_tag_filters_match_live_subscriptions(
    journal: Journal,
    mixed: list[JournalRecord],
    match_type: MatchType,
    pattern: str,
    probe_limit: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both ways of answering a startswith query must agree with the matcher
    # live subscriptions use; the probe bound decides which one is taken.
    monkeypatch.setattr(journal_query, "INDEX_PROBE_LIMIT", probe_limit)
    matches = tag_matcher(pattern, match_type)
    expected = [each for each in mixed if matches(each.tag)]
    assert journal.read(tag=pattern, match_type=match_type) == expected
    assert journal.read(tag=pattern, match_type=match_type.value) == expected
    assert journal.read(tag=pattern, match_type=match_type, limit=3) == expected[:3]
    window = [each for each in expected if 12 < each.seq <= 40]
    assert journal.read(tag=pattern, match_type=match_type, since=12, until=40) == window
    assert journal.read(tag=pattern, match_type=match_type, since=12, limit=2) == window[:2]


def test_startswith_is_case_sensitive_and_has_no_wildcards(journal: Journal) -> None:
    journal.append([record(1, "salt/auth"), record(2, "Salt/auth"), record(3, "salt_x")])
    assert seqs(journal.read(tag="salt")) == [1, 3]
    assert seqs(journal.read(tag="salt/")) == [1]
    assert journal.read(tag="sal%") == []
    assert journal.read(tag="sal_") == []


def test_empty_tag_matches_everything_for_every_match_type(
    journal: Journal, mixed: list[JournalRecord]
) -> None:
    for match_type in MatchType:
        assert journal.read(tag="", match_type=match_type) == mixed


def test_bad_match_type_and_bad_regex_raise_before_reading(journal: Journal) -> None:
    journal.append(records(1, 3))
    with pytest.raises(ConfigError):
        journal.read(tag="x", match_type="glob")
    with pytest.raises(ConfigError):
        journal.read(tag="(", match_type=MatchType.REGEX)


def test_startswith_uses_the_tag_index(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    journal.append(
        [record(seq, "salt/job/x" if seq % 100 else "salt/auth") for seq in range(1, 1001)]
    )
    monkeypatch.setattr(journal_query, "INDEX_PROBE_LIMIT", 100)
    conn = sqlite3.connect(journal.path)
    try:
        # A selective prefix over a long seq range: the index plan.
        sql, params = journal_query.plan(
            conn, journal_query.Filters(tag="salt/auth"), journal.last_seq
        )
        details = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "USING COVERING INDEX events_tag" in details
        # A broad prefix: walk the seq order and stop at the limit.
        sql, params = journal_query.plan(
            conn, journal_query.Filters(tag="salt/job", limit=10), journal.last_seq
        )
        details = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "events_tag" not in details
        assert "PRIMARY KEY" in details
    finally:
        conn.close()
    assert seqs(journal.read(tag="salt/auth")) == list(range(100, 1001, 100))


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [
        ("a", "b"),
        ("salt/", "salt0"),
        ("x\U0010ffff", "y"),
        ("\U0010ffff", None),
        ("a\ud7ff", "a\ue000"),  # skips the surrogates, which UTF-8 cannot hold
    ],
)
def test_prefix_upper_bound(prefix: str, upper: str | None) -> None:
    assert journal_query.prefix_upper_bound(prefix) == upper


def test_read_with_a_prefix_of_the_last_code_point(journal: Journal) -> None:
    journal.append([record(1, "\U0010ffffa"), record(2, "z"), record(3, "\U0010ffff")])
    assert seqs(journal.read(tag="\U0010ffff")) == [1, 3]


def test_time_bounds_are_half_open(journal: Journal) -> None:
    journal.append([record(seq, time=float(seq * 10)) for seq in range(1, 11)])  # 10..100
    assert seqs(journal.read(after_time=30.0)) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert seqs(journal.read(before_time=30.0)) == [1, 2]
    assert seqs(journal.read(after_time=30.0, before_time=60.0)) == [3, 4, 5]
    assert seqs(journal.read(after_time=30.0, before_time=60.0, limit=2)) == [3, 4]
    assert seqs(journal.read(after_time=25.0, tag="salt/au", since=3)) == [4, 5, 6, 7, 8, 9, 10]
    assert journal.read(after_time=101.0) == []


def test_time_bounds_do_not_assume_time_follows_seq(journal: Journal) -> None:
    # The clock stepped back between seq 2 and seq 3.
    journal.append([record(1, time=100.0), record(2, time=200.0), record(3, time=50.0)])
    assert seqs(journal.read(before_time=150.0)) == [1, 3]
    assert seqs(journal.read(after_time=150.0)) == [2]


def test_iter_read_reads_in_bounded_chunks(
    journal: Journal, mixed: list[JournalRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int | None] = []
    read = journal.read

    def spy(**kwargs: object) -> list[JournalRecord]:
        asked.append(kwargs["limit"])  # type: ignore[arg-type]
        found = read(**kwargs)  # type: ignore[arg-type]
        assert len(found) <= 4
        return found

    monkeypatch.setattr(journal, "read", spy)
    assert list(journal.iter_read(chunk=4)) == mixed
    assert asked and all(limit == 4 for limit in asked)
    assert len(asked) == 13  # 12 full chunks of 4, then the last 2 records

    asked.clear()
    expected = [each for each in mixed if each.tag.startswith("salt/job")][:5]
    assert list(journal.iter_read(chunk=2, tag="salt/job", limit=5)) == expected
    assert asked == [2, 2, 1]

    asked.clear()
    found = list(journal.iter_read(chunk=3, tag="/ret", match_type=MatchType.ENDSWITH, since=5))
    assert found == [e for e in mixed if e.seq > 5 and e.tag.endswith("/ret")]
    with pytest.raises(JournalError):
        journal.iter_read(chunk=0)


def test_iter_read_stops_at_the_last_seq_it_started_with(journal: Journal) -> None:
    journal.append(records(1, 10))
    found = []
    for each in journal.iter_read(chunk=3):
        found.append(each.seq)
        if each.seq == 5:
            journal.append([record(journal.last_seq() + 1)])  # appended while iterating
    assert found == list(range(1, 11))
    assert seqs(journal.read(since=10)) == [11]


def test_last_seq_survives_reopen(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.append(records(1, 7))
    with Journal.open(path) as journal:
        assert journal.last_seq() == 7
        journal.append([record(8)])
        with pytest.raises(JournalError):
            journal.append([record(8)])


def test_last_seq_survives_retention_deleting_everything(path: Path) -> None:
    with Journal.open(path, max_age=60.0) as journal:
        journal.append(records(1, 5))
        assert journal.enforce_retention(now=1_000_000.0) == 5
        assert journal.first_seq() is None
        assert journal.last_seq() == 5
    with Journal.open(path) as journal:
        assert journal.last_seq() == 5
        assert journal.stats().count == 0
        with pytest.raises(JournalError):
            journal.append([record(5)])
        journal.append([record(6)])


def test_retention_by_age(path: Path) -> None:
    with Journal.open(path, max_age=25.0) as journal:
        journal.append([record(seq, time=float(seq * 10)) for seq in range(1, 11)])
        # now=80: events older than 55 (seq 1..5) go.
        assert journal.enforce_retention(now=80.0) == 5
        assert seqs(journal.read()) == [6, 7, 8, 9, 10]
        assert journal.enforce_retention(now=80.0) == 0
        stats = journal.stats()
        assert (stats.first_seq, stats.count) == (6, 5)


def test_retention_by_age_keeps_a_contiguous_seq_range(path: Path) -> None:
    # seq 3 is stamped old (the clock stepped back), but seq 2 is not expired:
    # deleting seq 3 alone would leave a hole a resuming reader cannot see.
    with Journal.open(path, max_age=10.0) as journal:
        journal.append([record(1, time=10.0), record(2, time=95.0), record(3, time=5.0)])
        assert journal.enforce_retention(now=100.0) == 1
        assert seqs(journal.read()) == [2, 3]


def test_retention_by_bytes(path: Path) -> None:
    stored = records(1, 10)
    size = len(stored[0].body)
    assert all(len(each.body) == size for each in stored)
    with Journal.open(path, max_bytes=size * 4 + size // 2) as journal:
        journal.append(stored)
        journal.set_cursor("reader", 2)
        assert journal.enforce_retention() == 6
        assert seqs(journal.read()) == [7, 8, 9, 10]
        assert journal.stats().bytes == size * 4
        assert journal.cursors() == {"reader": 2}  # never deleted
        assert journal.last_seq() == 10


def test_retention_max_rows_deletes_in_steps(path: Path) -> None:
    with Journal.open(path, max_bytes=0) as journal:
        journal.append(records(1, 25))
        assert journal.enforce_retention(max_rows=10) == 10
        assert journal.first_seq() == 11
        assert journal.enforce_retention(max_rows=10) == 10
        assert journal.enforce_retention(max_rows=10) == 5
        assert journal.stats().count == 0
        assert journal.stats().bytes == 0


def test_retention_without_limits_deletes_nothing(journal: Journal) -> None:
    journal.append(records(1, 3))
    assert journal.enforce_retention(now=1e12) == 0
    assert journal.stats().count == 3


def test_retention_limits_are_checked(path: Path) -> None:
    with pytest.raises(JournalError):
        Journal.open(path, max_age=0)
    with pytest.raises(JournalError):
        Journal.open(path, max_bytes=-1)


def test_age_retention_keeps_what_a_consumer_has_not_taken(path: Path) -> None:
    with Journal.open(path, max_age=25.0) as journal:
        journal.append([record(seq, time=float(seq * 10)) for seq in range(1, 11)])
        # Seq 1..5 are expired; a consumer has taken up to 3.
        assert journal.enforce_retention(now=80.0, hold=3) == 3
        assert journal.first_seq() == 4
        assert journal.enforce_retention(now=80.0, hold=3) == 0
        # It moves on past the expired ones: the age limit applies again.
        assert journal.enforce_retention(now=80.0, hold=8) == 2
        assert journal.first_seq() == 6


def test_size_retention_does_not_wait_for_consumers(path: Path) -> None:
    stored = records(1, 10)
    size = len(stored[0].body)
    with Journal.open(path, max_age=1e9, max_bytes=size * 4) as journal:
        journal.append(stored)
        assert journal.enforce_retention(hold=0) == 6
        assert journal.first_seq() == 7


def test_epoch_is_chosen_once_and_kept(path: Path) -> None:
    with Journal.open(path) as journal:
        assert journal.epoch() is None
        epoch = journal.claim_epoch()
        assert 0 <= epoch < 2**63
        assert journal.claim_epoch() == epoch
        assert journal.cursors() == {}  # journal state, not a reader's cursor
    with Journal.open(path, readonly=True) as reader:
        assert reader.epoch() == epoch
    with Journal.open(path) as journal:
        assert journal.claim_epoch() == epoch
    other = path.with_name("other.sqlite3")
    with Journal.open(other) as journal:
        assert journal.claim_epoch() != epoch  # 63 random bits: equal once in 2**63


def test_version_1_journal_is_upgraded_with_its_epoch(path: Path) -> None:
    # A journal as saltbus wrote it before schema 2: the epoch was a cursor.
    path.parent.mkdir(mode=0o700)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in journal_schema._statements(journal_schema._MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO cursors VALUES ('saltbus:epoch', 4242, 0.0), ('returner:pg', 7, 0.0)")
    conn.close()
    with pytest.raises(JournalError, match="version 1"):
        Journal.open(path, readonly=True)
    with Journal.open(path) as journal:
        assert journal.epoch() == 4242
        assert journal.claim_epoch() == 4242
        assert journal.cursors() == {"returner:pg": 7}
    with Journal.open(path, readonly=True) as reader:
        assert reader.epoch() == 4242


def test_cursors_set_get_and_persist(path: Path) -> None:
    with Journal.open(path) as journal:
        assert journal.get_cursor("listen:ops") is None
        assert journal.cursors() == {}
        journal.set_cursor("listen:ops", 10)
        journal.set_cursor("returner:pg", 3)
        journal.set_cursor("listen:ops", 12)
        assert journal.get_cursor("listen:ops") == 12
        with pytest.raises(JournalError):
            journal.set_cursor("", 1)
        with pytest.raises(JournalError):
            journal.set_cursor("x", -1)
    with Journal.open(path) as journal:
        assert journal.cursors() == {"listen:ops": 12, "returner:pg": 3}


def test_readonly_sees_commits_of_a_writer_that_stays_open(path: Path) -> None:
    with Journal.open(path) as writer:
        writer.append(records(1, 3))
        writer.set_cursor("a", 1)
        with Journal.open(path, readonly=True) as reader:
            assert seqs(reader.read()) == [1, 2, 3]
            writer.append(records(4, 6))
            assert seqs(reader.read(since=3)) == [4, 5, 6]
            assert reader.last_seq() == 6
            assert reader.cursors() == {"a": 1}
            with pytest.raises(JournalError):
                reader.append([record(7)])
            with pytest.raises(JournalError):
                reader.set_cursor("a", 2)
        assert writer.last_seq() == 6


def test_readonly_opens_a_closed_journal_and_never_creates_one(path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(path, readonly=True)
    assert not path.exists()
    with Journal.open(path) as writer:
        writer.append(records(1, 2))
    with Journal.open(path, readonly=True) as reader:
        assert seqs(reader.read()) == [1, 2]


@pytest.mark.parametrize(("durability", "level"), [("batch", 1), ("fsync", 2)])
def test_durability_sets_the_pragmas(path: Path, durability: str, level: int) -> None:
    with Journal.open(path, durability=durability) as journal:  # type: ignore[arg-type]
        conn = journal._conn
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level  # 1 NORMAL, 2 FULL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == (
            journal_schema.WAL_AUTOCHECKPOINT_PAGES
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == journal_schema.SCHEMA_VERSION
    with pytest.raises(JournalError):
        Journal.open(path, durability="none")  # type: ignore[arg-type]


def test_new_journal_is_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "bus.sqlite3"
    with Journal.open(path) as journal:
        journal.append(records(1, 1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_refuses_a_newer_schema_and_foreign_files(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    with Journal.open(newer):
        pass
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {journal_schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        Journal.open(newer)
    with pytest.raises(JournalError, match="newer"):
        Journal.open(newer, readonly=True)

    foreign = tmp_path / "foreign.sqlite3"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(JournalError, match="not a saltbus journal"):
        Journal.open(foreign)

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError):
        Journal.open(garbage)


# -- the writer ---------------------------------------------------------------


class Outcomes:
    """Callbacks that record what the writer reported, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.order: list[tuple[str, Sequence[JournalRecord]]] = []
        self.errors: list[JournalError] = []
        self.done: queue.Queue[str] = queue.Queue()

    def committed(self, batch: Sequence[JournalRecord]) -> None:
        with self.lock:
            self.order.append(("committed", batch))
        self.done.put("committed")

    def failed(self, batch: Sequence[JournalRecord], error: JournalError) -> None:
        with self.lock:
            self.order.append(("failed", batch))
            self.errors.append(error)
        self.done.put("failed")

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            self.done.get(timeout=WAIT)


class Gate:
    """An on_committed that holds the writer thread until opened, so that
    everything submitted meanwhile is queued when it returns.

    ``submit_first`` submits a batch with it and waits until the writer is
    held in it: the batches submitted next are queued behind that commit."""

    def __init__(self, writer: JournalWriter, outcomes: Outcomes) -> None:
        self.writer = writer
        self.outcomes = outcomes
        self.entered = threading.Event()
        self.opened = threading.Event()

    def committed(self, batch: Sequence[JournalRecord]) -> None:
        self.entered.set()
        assert self.opened.wait(WAIT)
        self.outcomes.committed(batch)

    def submit_first(self, batch: Sequence[JournalRecord]) -> None:
        self.writer.submit(batch, self.committed, on_failed=self.outcomes.failed)
        assert self.entered.wait(WAIT)

    def open(self) -> None:
        self.opened.set()


def test_writer_start_returns_last_seq(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.append(records(1, 41))
    writer = JournalWriter(path, durability="batch")
    assert writer.start() == 41
    assert writer.last_seq == 41
    writer.close()
    with pytest.raises(JournalError):
        writer.start()


def test_writer_commits_batches_from_threads_in_submission_order(path: Path) -> None:
    outcomes = Outcomes()
    numbering = threading.Lock()  # numbering and submitting together, as the publisher does
    submitted: list[Sequence[JournalRecord]] = []
    with JournalWriter(path, durability="batch") as writer:
        next_seq = [writer.last_seq + 1]

        def submitter(index: int) -> None:
            for round_ in range(50):
                with numbering:
                    size = 1 + (index + round_) % 7
                    first = next_seq[0]
                    next_seq[0] += size
                    batch = [record(seq, TAGS[index]) for seq in range(first, first + size)]
                    submitted.append(batch)
                    writer.submit(batch, outcomes.committed, on_failed=outcomes.failed)

        threads = [threading.Thread(target=submitter, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        outcomes.wait_for(len(submitted))
        assert writer.records_committed == sum(len(batch) for batch in submitted)
    assert [kind for kind, _ in outcomes.order] == ["committed"] * len(submitted)
    # The very batch objects, in the order they were submitted.
    assert all(got is sent for (_, got), sent in zip(outcomes.order, submitted, strict=True))
    with Journal.open(path, readonly=True) as journal:
        assert journal.read() == [each for batch in submitted for each in batch]


def test_writer_groups_batches_queued_during_a_commit(path: Path) -> None:
    outcomes = Outcomes()
    with JournalWriter(path, durability="fsync") as writer:
        gate = Gate(writer, outcomes)
        gate.submit_first(records(1, 1))
        for seq in range(2, 102):
            writer.submit([record(seq)], outcomes.committed, on_failed=outcomes.failed)
        gate.open()
        outcomes.wait_for(101)
        # One transaction for the first batch, one for the 100 queued behind it.
        assert writer.transactions == 2
        assert writer.records_committed == 101
        assert writer.last_seq == 101
    assert seqs([batch[0] for _, batch in outcomes.order]) == list(range(1, 102))


def test_writer_bounds_the_size_of_a_group(path: Path) -> None:
    outcomes = Outcomes()
    with JournalWriter(path, durability="batch", max_group_records=25) as writer:
        gate = Gate(writer, outcomes)
        gate.submit_first(records(1, 1))
        for first in range(2, 102, 10):
            writer.submit(records(first, first + 9), outcomes.committed, on_failed=outcomes.failed)
        gate.open()
        outcomes.wait_for(11)
        # 10 batches of 10 behind the first, at most 3 batches (25+ records) a group.
        assert writer.transactions == 1 + 4


def test_writer_close_commits_what_is_queued(path: Path) -> None:
    outcomes = Outcomes()
    writer = JournalWriter(path, durability="batch")
    writer.start()
    for first in range(1, 1001, 10):
        writer.submit(records(first, first + 9), outcomes.committed, on_failed=outcomes.failed)
    writer.close(timeout=WAIT)
    assert len(outcomes.order) == 100
    with pytest.raises(JournalError):
        writer.submit(records(1001, 1001), outcomes.committed, on_failed=outcomes.failed)
    writer.close()  # idempotent
    with Journal.open(path) as journal:
        assert journal.last_seq() == 1000
        assert journal.stats().count == 1000


def test_writer_close_from_a_callback_still_drains_the_queue(path: Path) -> None:
    # The first batch's callback closes the writer once the others are
    # queued, so they are certainly ahead of the close marker.
    outcomes = Outcomes()
    queued = threading.Event()
    writer = JournalWriter(path, durability="batch")
    writer.start()

    def close_when_queued(batch: Sequence[JournalRecord]) -> None:
        assert queued.wait(WAIT)
        writer.close()  # from the writer thread: marks the end and returns
        outcomes.committed(batch)

    writer.submit(records(1, 1), close_when_queued, on_failed=outcomes.failed)
    for seq in range(2, 51):
        writer.submit([record(seq)], outcomes.committed, on_failed=outcomes.failed)
    queued.set()
    writer.close(timeout=WAIT)
    assert len(outcomes.order) == 50
    with Journal.open(path) as journal:
        assert journal.last_seq() == 50


def test_writer_failure_reaches_on_failed_and_the_writer_goes_on(path: Path) -> None:
    outcomes = Outcomes()
    good_before, bad, good_after = records(2, 4), records(3, 5), records(5, 6)
    with JournalWriter(path, durability="batch") as writer:
        gate = Gate(writer, outcomes)
        gate.submit_first(records(1, 1))
        # Queued together: the bad batch must fail alone, not its neighbours.
        writer.submit(good_before, outcomes.committed, on_failed=outcomes.failed)
        writer.submit(bad, outcomes.committed, on_failed=outcomes.failed)
        writer.submit(good_after, outcomes.committed, on_failed=outcomes.failed)
        gate.open()
        outcomes.wait_for(4)
        # A lone failing batch, then a later good one.
        writer.submit(records(6, 6), outcomes.committed, on_failed=outcomes.failed)
        outcomes.wait_for(1)
        writer.submit(records(7, 9), outcomes.committed, on_failed=outcomes.failed)
        outcomes.wait_for(1)
        assert writer.last_seq == 9
    kinds = [(kind, seqs(batch)) for kind, batch in outcomes.order]
    assert kinds == [
        ("committed", [1]),
        ("committed", [2, 3, 4]),
        ("failed", [3, 4, 5]),
        ("committed", [5, 6]),
        ("failed", [6]),
        ("committed", [7, 8, 9]),
    ]
    assert all(isinstance(error, JournalError) for error in outcomes.errors)
    with Journal.open(path) as journal:
        assert seqs(journal.read()) == list(range(1, 10))


def test_writer_survives_a_callback_that_raises(path: Path) -> None:
    outcomes = Outcomes()

    def explode(batch: Sequence[JournalRecord]) -> None:
        raise RuntimeError("callback bug")

    with JournalWriter(path, durability="batch") as writer:
        writer.submit(records(1, 1), explode, on_failed=outcomes.failed)
        writer.submit(records(2, 2), outcomes.committed, on_failed=outcomes.failed)
        outcomes.wait_for(1)
    assert [seqs(batch) for _, batch in outcomes.order] == [[2]]


def test_writer_start_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = JournalWriter(blocker / "bus.sqlite3", durability="batch")
    with pytest.raises(JournalError):
        writer.start(timeout=WAIT)
    with pytest.raises(JournalError):
        writer.submit(records(1, 1), lambda batch: None, on_failed=lambda batch, error: None)
    writer.close()


def test_writer_applies_retention_when_it_starts(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.append(records(1, 30))
        size = journal.stats().bytes
    writer = JournalWriter(path, durability="batch", max_bytes=size // 3)
    writer.start()
    writer.close(timeout=WAIT)  # retention runs before the first batch is served
    with Journal.open(path) as journal:
        assert journal.stats().bytes <= size // 3
        assert journal.last_seq() == 30
        assert journal.first_seq() == 21


def test_writer_retention_waits_for_holds(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.append(records(1, 30))  # stamped 1001..1030: long expired
    holds = {"returner:pg": 12}
    writer = JournalWriter(path, durability="batch", max_age=60.0, holds=lambda: holds)
    with writer:
        writer.submit(records(31, 31), lambda _: None, on_failed=lambda *_: None)
    with Journal.open(path) as journal:
        assert journal.first_seq() == 13
    holds["returner:pg"] = 25
    writer = JournalWriter(path, durability="batch", max_age=60.0, holds=lambda: holds)
    with writer:
        pass
    with Journal.open(path) as journal:
        assert journal.first_seq() == 26


def test_writer_retain_now_applies_a_released_hold(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.append(records(1, 30))
    holds = {"cluster:export": 0}
    asked = threading.Event()

    def positions() -> dict[str, int]:
        asked.set()
        return holds

    committed: queue.SimpleQueue[int] = queue.SimpleQueue()
    with JournalWriter(path, durability="batch", max_age=60.0, holds=positions) as writer:
        assert asked.wait(WAIT)  # the first step, at start, was held
        with Journal.open(path, readonly=True) as reader:
            assert reader.first_seq() == 1
        del holds["cluster:export"]
        writer.retain_now()
        # A batch submitted after retain_now() is served after the retention step.
        writer.submit(records(31, 31), lambda done: committed.put(done[0].seq), on_failed=print)
        assert committed.get(timeout=WAIT) == 31
        with Journal.open(path, readonly=True) as reader:
            assert reader.first_seq() == 31


def test_writer_says_when_the_size_limit_costs_a_consumer_events(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Journal.open(path) as journal:
        journal.append(records(1, 30))
        size = journal.stats().bytes
    holds = {"returner:pg": 5, "cluster:export": 25}
    writer = JournalWriter(path, durability="batch", max_bytes=size // 3, holds=lambda: holds)
    with caplog.at_level("WARNING", logger="saltbus.journal.writer"), writer:
        pass
    with Journal.open(path) as journal:
        assert journal.first_seq() == 21
    assert "deleted events up to seq 20 that returner:pg had not taken" in caplog.text
    assert "cluster:export" not in caplog.text


KILLED_WRITER = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from saltbus.journal import JournalRecord, JournalWriter
    from saltbus.wire import pack_body

    in_flight = threading.Semaphore(8)  # a bounded backlog, as the publisher keeps

    def committed(batch):
        print(batch[-1].seq, flush=True)
        in_flight.release()

    def failed(batch, error):
        print("failed", error, flush=True)
        in_flight.release()

    writer = JournalWriter(Path(sys.argv[1]), durability="batch")
    seq = writer.start()
    while True:  # until killed
        batch = []
        for _ in range(50):
            seq += 1
            tag = f"bench/evt/{seq}"
            batch.append(JournalRecord(seq, time.time(), tag, pack_body(tag, {"n": seq})))
        in_flight.acquire()
        writer.submit(batch, committed, on_failed=failed)
    """
)


def test_records_committed_before_sigkill_are_kept(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    path = tmp_path / "bus.sqlite3"
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.strip())

    threading.Thread(target=read_lines, daemon=True).start()
    try:
        confirmed = 0
        while confirmed < 5_000:
            line = lines.get(timeout=WAIT)
            assert not line.startswith("failed"), line
            confirmed = int(line)
        os.kill(child.pid, signal.SIGKILL)  # right after a commit was reported
    finally:
        child.kill()
        child.wait(WAIT)
    assert child.returncode == -signal.SIGKILL
    while not lines.empty():  # reported before the kill landed
        confirmed = max(confirmed, int(lines.get_nowait()))
    with Journal.open(path) as journal:
        assert journal.last_seq() >= confirmed
        kept = journal.read(until=confirmed)
        assert seqs(kept) == list(range(1, confirmed + 1))
        assert kept[-1].tag == f"bench/evt/{confirmed}"
        journal.append([record(journal.last_seq() + 1)])  # and it goes on after a restart


# -- where journals live ------------------------------------------------------


def test_default_data_dir() -> None:
    assert default_data_dir(env={}, uid=0) == Path("/var/lib/saltbus")
    env = {"XDG_DATA_HOME": "/x/data", "HOME": "/home/u"}
    assert default_data_dir(env=env, uid=1000) == Path("/x/data/saltbus")
    env = {"XDG_DATA_HOME": "relative/ignored", "HOME": "/home/u"}
    assert default_data_dir(env=env, uid=1000) == Path("/home/u/.local/share/saltbus")
    assert default_data_dir(env={"HOME": "/home/u"}, uid=1000) == Path(
        "/home/u/.local/share/saltbus"
    )


def test_journal_path_is_stable_and_per_bus(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run = tmp_path / "run"
    run.mkdir()
    link = tmp_path / "link"
    link.symlink_to(run)
    master = journal_path(data, run, "master_event")
    assert master == journal_path(data, link, "master_event")  # resolved first
    assert master.parent == data
    assert master.name.startswith("master_event-") and master.name.endswith(".sqlite3")
    assert master != journal_path(data, run, "minion_event_0123456789")
    assert master != journal_path(data, tmp_path / "other", "master_event")
    for bad in ("", "a/b", ".."):
        with pytest.raises(JournalError):
            journal_path(data, run, bad)

"""Telling damaged journal files apart, at open and while in use (saltbus.journal.damage).

Every file is a real one under ``tmp_path``, damaged the way a disk or a
person would damage it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saltbus.errors import JournalError
from saltbus.journal import Journal, JournalRecord
from saltbus.journal import schema as journal_schema
from saltbus.journal.damage import (
    JournalDamagedError,
    describe_findings,
    header_problem,
    is_damage,
)
from tests.journal_support import (
    build_journal,
    event,
    middle_leaves,
    overwrite_pages,
    truncate,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "master_event-0123456789ab.sqlite3"


def assert_one_line(exc: BaseException, *words: str) -> None:
    text = str(exc)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def test_a_new_journal_is_never_seen_empty_or_half_made(path: Path) -> None:
    with Journal.open(path) as journal:
        assert journal.last_seq() == 0
    assert header_problem(path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no draft left
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("readonly", [False, True])
def test_an_empty_file_is_named_for_what_it_is(path: Path, readonly: bool) -> None:
    build_journal(path, 5)
    truncate(path, 0)
    with pytest.raises(JournalDamagedError) as info:
        Journal.open(path, readonly=readonly)
    assert_one_line(info.value, str(path), "empty file", "saltbus journal recover")
    assert path.stat().st_size == 0  # not silently made a new journal


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_sqlite(path: Path, readonly: bool) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"#!/bin/sh\necho hello\n" * 50)
    with pytest.raises(JournalDamagedError) as info:
        Journal.open(path, readonly=readonly)
    assert_one_line(info.value, str(path), "not an SQLite file", "#!/bin/sh")


@pytest.mark.parametrize("readonly", [False, True])
def test_an_sqlite_file_that_is_not_a_journal(path: Path, readonly: bool) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalDamagedError) as info:
        Journal.open(path, readonly=readonly)
    assert_one_line(info.value, str(path), "not a saltbus journal")


def test_a_newer_schema_is_not_damage(path: Path) -> None:
    build_journal(path, 1)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {journal_schema.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError) as info:
        Journal.open(path)
    assert not isinstance(info.value, JournalDamagedError)
    assert_one_line(info.value, "newer", "upgrade saltbus")


def test_a_truncated_file_is_refused_for_writing_and_read_up_to_the_cut(path: Path) -> None:
    build_journal(path, 2000)
    truncate(path, path.stat().st_size // 2 + 10)
    with pytest.raises(JournalDamagedError) as info:
        Journal.open(path)
    assert_one_line(info.value, "is truncated", "bytes where its header says")
    with Journal.open(path, readonly=True) as journal:
        assert [r.seq for r in journal.read(limit=5)] == [1, 2, 3, 4, 5]


def test_damaged_pages_are_found_by_the_check_at_open(path: Path) -> None:
    build_journal(path, 3000)
    overwrite_pages(path, middle_leaves(path))
    with Journal.open(path) as journal:  # without the check, the open itself works
        assert journal.last_seq() == 3000
    with pytest.raises(JournalDamagedError) as info:
        Journal.open(path, check=True)
    assert_one_line(info.value, str(path), "is damaged", "saltbus journal recover")


def test_a_large_journal_is_checked_at_its_edges(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Above the size limit only the edges are read: damage at the newest end
    # is found, damage in the middle is left to the reads that meet it.
    build_journal(path, 3000)
    monkeypatch.setattr(journal_schema, "QUICK_CHECK_MAX_BYTES", 0)
    overwrite_pages(path, middle_leaves(path))
    with Journal.open(path, check=True) as journal, pytest.raises(JournalDamagedError) as info:
        journal.read()
    assert_one_line(info.value, "is damaged", "found trying to read it")
    last_page = path.stat().st_size // 4096
    overwrite_pages(path, [last_page])
    with pytest.raises(JournalDamagedError):
        Journal.open(path, check=True)


def test_retention_on_damaged_pages_raises_one_line(path: Path) -> None:
    build_journal(path, 3000)
    overwrite_pages(path, middle_leaves(path))
    with Journal.open(path, max_bytes=0) as journal:
        with pytest.raises(JournalDamagedError) as info:
            journal.enforce_retention()
        assert_one_line(info.value, str(path), "apply retention", "saltbus journal recover")
        # The journal is still usable for appends at its end.
        journal.append([event(3001)])
        assert journal.last_seq() == 3001


def test_the_fix_names_the_bus(path: Path) -> None:
    error = JournalDamagedError(path, "is damaged (x)")
    named = error.with_fix("saltbus journal recover --sock-dir /run/bus")
    assert_one_line(named, str(path), "`saltbus journal recover --sock-dir /run/bus`")
    assert named.problem == error.problem and named.path == path
    assert isinstance(named, JournalError)


def test_is_damage_tells_a_malformed_file_from_a_busy_one() -> None:
    malformed = sqlite3.DatabaseError("database disk image is malformed")
    malformed.sqlite_errorcode = 11  # type: ignore[attr-defined]
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert is_damage(malformed)
    assert not is_damage(busy)
    assert not is_damage(ValueError("malformed"))


def test_findings_are_shortened_to_one_line() -> None:
    findings = ["*** in database main ***\nPage 5: btreeInitPage() returns error code 11", "x"]
    text = describe_findings(findings)
    assert text == "Page 5: btreeInitPage() returns error code 11 and 1 more finding(s)"
    assert describe_findings(["one"]) == "one"


def test_sock_dir_is_recorded_by_the_daemon_s_open(path: Path, tmp_path: Path) -> None:
    with Journal.open(path) as journal:
        assert journal.sock_dir() is None
    with Journal.open(path, sock_dir=tmp_path / "." / "bus") as journal:
        assert journal.sock_dir() == (tmp_path / "bus").resolve()
    with Journal.open(path, readonly=True) as journal:
        assert journal.sock_dir() == (tmp_path / "bus").resolve()


def test_a_version_2_journal_is_read_as_it_is_and_upgraded_by_a_writer(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for script in journal_schema._MIGRATIONS[:2]:
        for statement in journal_schema._statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("UPDATE meta SET last_seq = 1, count = 1, bytes = 1")
    conn.execute(
        "INSERT INTO events VALUES (1, 1.0, 'a', ?)",
        (JournalRecord.from_body(1, 1.0, b"a\n\n\x80").body,),
    )
    conn.close()
    with Journal.open(path, readonly=True) as journal:
        assert journal.sock_dir() is None  # shown as "unknown"
        assert [r.seq for r in journal.read()] == [1]
    with Journal.open(path) as journal:
        journal.record_sock_dir(path.parent)
    with Journal.open(path, readonly=True) as journal:
        assert journal.sock_dir() == path.parent.resolve()

"""The journals of a data directory (saltbus.journal.inventory)."""

from __future__ import annotations

import os
from pathlib import Path

from saltbus.journal.inventory import describe, journal_files, side_paths
from saltbus.journal.paths import journal_path
from saltbus.journal.tail import encode, tail_path
from tests.journal_support import build_journal, event, truncate


def test_only_journal_names_are_listed(tmp_path: Path) -> None:
    path = journal_path(tmp_path, tmp_path / "bus", "master_event")
    build_journal(path, 3)
    for other in ("notes.txt", f"{path.name}.damaged-20261203T000000Z", f"{path.name}-wal"):
        (tmp_path / other).touch()
    assert journal_files(tmp_path) == [path]
    assert journal_files(tmp_path / "missing") == []


def test_describe_reads_the_bus_seqs_and_size(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    path = journal_path(tmp_path, bus, "minion_event_0123456789")
    build_journal(path, 12, bus)
    described = describe(path)
    assert described.socket_prefix == "minion_event_0123456789"
    assert described.sock_dir == bus.resolve()
    assert (described.first_seq, described.last_seq) == (1, 12)
    assert described.size >= path.stat().st_size and described.problem is None
    # A reader's empty WAL is not a write.
    os.utime(path, (1_000_000.0, 1_000_000.0))
    Path(f"{path}-wal").write_bytes(b"")
    assert describe(path).last_written == 1_000_000.0
    assert side_paths(path)[-1] == path.with_suffix(".positions")


def test_the_last_seq_counts_what_only_the_tail_holds(tmp_path: Path) -> None:
    path = journal_path(tmp_path, tmp_path / "bus", "master_event")
    build_journal(path, 12)
    # A killed publisher's tail: 11-12 are in SQLite, 13-15 not yet.
    tail_path(path).write_bytes(encode([event(seq) for seq in range(11, 16)]))
    described = describe(path)
    assert (described.first_seq, described.last_seq) == (1, 15)
    assert described.size >= path.stat().st_size + tail_path(path).stat().st_size


def test_a_damaged_journal_is_described_with_its_problem(tmp_path: Path) -> None:
    path = journal_path(tmp_path, tmp_path / "bus", "master_event")
    build_journal(path, 3)
    truncate(path, 0)
    described = describe(path)
    assert described.last_seq is None and described.sock_dir is None
    assert described.problem is not None and "empty file" in described.problem

"""The writer's failure that sticks: once the journal's file cannot be written
(a full disk here, a real tmpfs), no later batch commits around the hole until
a probe batch does, and batch-specific failures still fail alone."""

from __future__ import annotations

import time
from pathlib import Path

from saltbus.errors import JournalWriteError
from saltbus.journal.store import Journal
from saltbus.journal.writer import JournalWriter
from tests.disk_support import fill, small_disk
from tests.test_journal import Gate, Outcomes, records, seqs

BIG = 20_000  # bytes of data per event: a few fill the margin left


def test_a_full_disk_fails_every_later_batch_until_a_probe_commits(tmp_path: Path) -> None:
    outcomes = Outcomes()
    with small_disk(tmp_path, 8) as disk:
        path = disk / "bus.sqlite3"
        with JournalWriter(path, durability="batch") as writer:
            writer.submit(records(1, 5), outcomes.committed, on_failed=outcomes.failed)
            outcomes.wait_for(1)
            filler = fill(disk, leave=64 * 1024)
            # Batches of big events until one fails for want of space.
            seq = 6
            while not outcomes.errors and seq < 1000:
                batch = records(seq, seq + 9)
                batch = [r.__class__(r.seq, r.time, r.tag, r.body + b"\0" * BIG) for r in batch]
                writer.submit(batch, outcomes.committed, on_failed=outcomes.failed)
                outcomes.wait_for(1)
                seq += 10
            assert outcomes.errors, "the disk never filled"
            error = outcomes.errors[-1]
            assert isinstance(error, JournalWriteError) and error.reason == "disk full"
            last = writer.last_seq
            filler.unlink()
            # Space is back, but a plain batch still fails untried: it would
            # commit above the events that failed.
            writer.submit(records(seq, seq), outcomes.committed, on_failed=outcomes.failed)
            outcomes.wait_for(1)
            assert outcomes.order[-1][0] == "failed"
            assert outcomes.errors[-1] is error
            # The probe, renumbered after the journal's last seq, commits.
            done, failed = outcomes.committed, outcomes.failed
            writer.submit(records(last + 1, last + 3), done, on_failed=failed, probe=True)
            outcomes.wait_for(1)
            writer.submit(records(last + 4, last + 4), done, on_failed=failed)
            outcomes.wait_for(1)
            assert [kind for kind, _ in outcomes.order[-2:]] == ["committed", "committed"]
        with Journal.open(path, readonly=True) as journal:
            assert seqs(journal.read()) == list(range(1, last + 5))


def test_an_idle_writer_commits_inline_and_a_busy_one_leaves_it_to_its_thread(
    tmp_path: Path,
) -> None:
    outcomes = Outcomes()
    path = tmp_path / "bus.sqlite3"
    with JournalWriter(path, durability="batch") as writer:
        assert writer.commit_inline(records(1, 3))
        assert writer.last_seq == 3
        # A batch queued behind a held commit: an inline one now would jump it.
        gate = Gate(writer, outcomes)
        gate.submit_first(records(4, 4))
        writer.submit(records(5, 5), outcomes.committed, on_failed=outcomes.failed)
        assert not writer.commit_inline(records(6, 6))
        gate.open()
        outcomes.wait_for(2)
        assert writer.commit_inline(records(6, 7))
    with Journal.open(path, readonly=True) as journal:
        assert seqs(journal.read()) == list(range(1, 8))
    with JournalWriter(path, durability="fsync") as writer:
        assert not writer.commit_inline(records(8, 8)), "fsync commits stay off the caller"


def test_lazy_batches_wait_for_company_until_one_that_is_not_lazy_comes(
    tmp_path: Path,
) -> None:
    outcomes = Outcomes()
    path = tmp_path / "bus.sqlite3"
    # A linger far beyond the wait below: only the plain batch can end it.
    with JournalWriter(path, durability="batch", linger=3600.0) as writer:
        before = writer.transactions
        for first in (1, 3, 5):
            writer.submit(
                records(first, first + 1), outcomes.committed, on_failed=outcomes.failed, lazy=True
            )
        writer.submit(records(7, 7), outcomes.committed, on_failed=outcomes.failed)
        outcomes.wait_for(4)
        assert writer.transactions == before + 1, "the four batches share one transaction"
        assert [batch[0].seq for _, batch in outcomes.order] == [1, 3, 5, 7]
    with Journal.open(path, readonly=True) as journal:
        assert seqs(journal.read()) == list(range(1, 8))


def test_checkpoints_copy_the_wal_into_the_database_off_the_commit_path(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    with JournalWriter(path, durability="batch") as writer:
        size_before = path.stat().st_size
        for first in range(1, 2001, 10):
            assert writer.commit_inline(records(first, first + 9))
        # Autocheckpoint is off on the writer's connection; the checkpointer's
        # connection copies the WAL into the file within a second or two.
        deadline = time.monotonic() + 10
        while path.stat().st_size <= size_before:
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)

"""``saltbus journal recover``: a fresh journal of every readable event.

The damaged file is never written to: it is read (see :mod:`.salvage`), a new
journal is written beside it under a temporary name, and only then is the
damaged one renamed aside (``<name>.damaged-<UTC stamp>``, its WAL with it)
and the new one renamed into its place. The caller holds the bus's lock, so
no publisher opens either file meanwhile.

The publisher's numbering (the epoch) is kept when the old file still says
both its epoch and its last seq: the new journal then goes on with the same
seqs, and a reader's position means what it meant. When either is lost, a
seq already handed out could be handed out again, so the new journal gets a
new epoch and readers holding an old seq learn that it means nothing here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saltbus.journal.pages import scan
from saltbus.journal.records import JournalRecord
from saltbus.journal.salvage import (
    EVENTS_LOST,
    LostRanges,
    Salvage,
    connect_readonly,
    events,
    inspect,
    is_sound,
)
from saltbus.journal.store import Journal

# Events written to the new journal per transaction.
BATCH: Final = 5000
_SIDE_FILES: Final = ("-wal", "-shm")


@dataclass(frozen=True)
class Recovery:
    """What ``recover`` did."""

    path: Path
    aside: Path  # where the damaged file now is
    salvage: Salvage  # what was found wrong, and the seq ranges lost
    kept: int  # events written to the new journal
    epoch_kept: bool  # the new journal has the old epoch (same numbering)
    cursors_kept: int  # readers' cursors carried over

    @property
    def lost(self) -> int | None:
        """Events lost, by the old file's running count (None when unreadable)."""
        if self.salvage.count is None:
            return None
        return max(0, self.salvage.count - self.kept)


def damaged_name(path: Path, stamp: str) -> Path:
    """Where recovery puts the damaged file at ``path``."""
    return path.with_name(f"{path.name}.damaged-{stamp}")


def recover(path: Path, stamp: str) -> Recovery:
    """Write every readable event of ``path`` to a fresh journal that takes its
    place; the damaged file goes to :func:`damaged_name`. ``stamp`` names it."""
    fresh = path.with_name(f".{path.name}.recovering-{stamp}")
    _remove(fresh)
    try:
        salvage, kept, cursors, epoch_kept = _write_fresh(path, fresh)
        aside = damaged_name(path, stamp)
        os.rename(path, aside)
        for suffix in _SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        os.rename(fresh, path)
    except BaseException:
        _remove(fresh)
        raise
    return Recovery(path, aside, salvage, kept, epoch_kept, cursors)


def _write_fresh(path: Path, fresh: Path) -> tuple[Salvage, int, int, bool]:
    kept = cursors = 0
    conn = None
    try:
        conn = connect_readonly(path) if path.stat().st_size else None
    except sqlite3.Error:
        conn = None  # inspect() opens it again, to say why it cannot
    try:
        salvage = inspect(path, conn)
        with Journal.open(fresh) as journal:
            if conn is not None and salvage.readable:
                batch: list[JournalRecord] = []
                for record in events(conn, salvage):
                    batch.append(record)
                    if len(batch) >= BATCH:
                        journal.append(batch)
                        kept += len(batch)
                        batch = []
                journal.append(batch)
                kept += len(batch)
                if salvage.lost:
                    kept += _from_pages(path, journal, salvage)
            if (not salvage.readable or salvage.unreachable) and path.stat().st_size:
                kept += _whole_file(path, journal)
            journal.recount()
            for name, (seq, _updated) in (salvage.cursors or {}).items():
                journal.set_cursor(name, seq)
                cursors += 1
            epoch_kept = salvage.epoch is not None and salvage.last_seq is not None
            journal.restore_meta(
                epoch=salvage.epoch if epoch_kept else None,
                last_seq=salvage.last_seq or 0,
                sock_dir=salvage.sock_dir,
            )
            if not epoch_kept:
                journal.claim_epoch()
    finally:
        if conn is not None:
            conn.close()
    return salvage, kept, cursors, epoch_kept


def _from_pages(path: Path, journal: Journal, salvage: Salvage) -> int:
    """Events of the lost seq ranges found on intact leaf pages that SQLite
    could not reach (under a damaged interior page); ``salvage.lost`` then
    keeps only the seqs still missing."""
    lost = LostRanges(list(salvage.lost.ranges))
    found: dict[int, JournalRecord] = {}
    for record in scan(path, lost.covers):
        if record.seq not in found and is_sound(record):
            found[record.seq] = record
    stored = journal.insert_missing([found[seq] for seq in sorted(found)])
    salvage.lost = lost.without(sorted(found))
    if not salvage.lost:
        salvage.problems = [p for p in salvage.problems if not p.startswith(EVENTS_LOST)]
    return stored


def _whole_file(path: Path, journal: Journal) -> int:
    """Every event found on the pages of a file SQLite cannot open as a
    journal (its first page or header damaged), stored in batches."""
    stored = 0
    batch: list[JournalRecord] = []
    for record in scan(path, lambda _seq: True):
        if is_sound(record):
            batch.append(record)
        if len(batch) >= BATCH:
            stored += journal.insert_missing(batch)
            batch = []
    return stored + journal.insert_missing(batch)


def _remove(path: Path) -> None:
    for each in (path, *(Path(f"{path}{suffix}") for suffix in _SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            each.unlink()

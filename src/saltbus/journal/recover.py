"""``saltbus journal recover``: a fresh journal of every readable event.

The damaged file is never written to: it is read (see :mod:`.salvage`), a new
journal is written beside it under a temporary name, and only then is the
damaged one renamed aside (``<name>.damaged-<UTC stamp>``, its WAL with it)
and the new one renamed into its place. The caller holds the bus's lock, so
no publisher opens either file meanwhile.

The journal's tail (the events a killed publisher delivered before SQLite
indexed them) is read too: its records SQLite lacks, past its last seq or in
the ranges lost to damage, go to the new journal, and the tail goes aside
with the damaged file (``<aside>.tail``). So do the reactor's state tables
that read whole (:mod:`.state_tables`); a set that does not is left out.

The publisher's numbering (the epoch) is kept when the old file still says
both its epoch and its last seq, and its tail is not damaged: the new journal
then goes on with the same seqs, and a reader's position means what it meant.
When any of these is lost, a seq already handed out could be handed out
again, so the new journal gets a new epoch and readers holding an old seq
learn that it means nothing here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saltbus.errors import JournalError
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
from saltbus.journal.state_tables import StateSet, copy_sets
from saltbus.journal.store import Journal
from saltbus.journal.tail import TAIL_SUFFIX

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
    from_tail: int  # of the events kept, those found only in the tail
    states_kept: list[StateSet]  # the reactor's state tables carried over
    states_lost: list[StateSet]  # ... and those that could not be

    @property
    def lost(self) -> int | None:
        """Events lost, by the old file's running count (None when unreadable,
        or when the tail is damaged: how many it held past that is unknown)."""
        tail = self.salvage.tail
        if self.salvage.count is None or (tail is not None and tail.damage is not None):
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
        done = _write_fresh(path, fresh, damaged_name(path, stamp))
        os.rename(path, done.aside)
        for suffix in (*_SIDE_FILES, TAIL_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{done.aside}{suffix}")
        os.rename(fresh, path)
    except BaseException:
        _remove(fresh)
        raise
    return done


def _write_fresh(path: Path, fresh: Path, aside: Path) -> Recovery:
    kept = cursors = from_tail = 0
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
            from_tail = _from_tail(journal, salvage)
            kept += from_tail
            for name, (seq, _updated) in (salvage.cursors or {}).items():
                journal.set_cursor(name, seq)
                cursors += 1
            # Past a damaged frame of the tail, seqs were handed out (delivered)
            # that no file says any more: they could be handed out again.
            tail_sound = salvage.tail is None or salvage.tail.damage is None
            epoch_kept = salvage.epoch is not None and salvage.last_seq is not None and tail_sound
            tail_last = salvage.tail.last_seq if salvage.tail is not None else None
            journal.restore_meta(
                epoch=salvage.epoch if epoch_kept else None,
                last_seq=max(salvage.last_seq or 0, tail_last or 0),
                sock_dir=salvage.sock_dir,
            )
            if not epoch_kept:
                journal.claim_epoch()
    finally:
        if conn is not None:
            conn.close()
    states = salvage.states or []
    kept_states = [state for state in states if state.problem is None]
    _copy_states(fresh, kept_states)
    lost_states = [state for state in states if state.problem is not None]
    return Recovery(
        path, aside, salvage, kept, epoch_kept, cursors, from_tail, kept_states, lost_states
    )


def _from_tail(journal: Journal, salvage: Salvage) -> int:
    """Store the tail's records the new journal lacks: past the old file's
    last seq (never indexed) or in a range lost to damage; ``salvage.lost``
    then keeps only the seqs still missing. Returns how many were stored."""
    if salvage.tail is None:
        return 0
    last = max(salvage.last_seq or 0, journal.last_seq())
    wanted = [r for r in salvage.tail.records if r.seq > last or salvage.lost.covers(r.seq)]
    stored = journal.insert_missing(wanted)
    journal.recount()
    if salvage.lost:
        salvage.lost = salvage.lost.without([record.seq for record in wanted])
        if not salvage.lost:
            salvage.problems = [p for p in salvage.problems if not p.startswith(EVENTS_LOST)]
    return stored


def _copy_states(fresh: Path, states: list[StateSet]) -> None:
    if not states:
        return
    try:
        conn = sqlite3.connect(fresh, isolation_level=None)
        try:
            copy_sets(states, conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot copy the reactor's state into {fresh}: {exc}") from None


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

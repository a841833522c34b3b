"""The journal's tail as read-only readers see it (history, ``journal check``).

The publisher appends each event to the tail (:mod:`.tail`) before SQLite
indexes it, so after a kill -9 the tail holds delivered events SQLite lacks
until the next ``serve`` indexes them. A reader merges the tail's records past
SQLite's last seq. It opens the tail read-only and never changes it: the
publisher may be running and appending.

To merge without a gap, read the tail *before* taking SQLite's last seq: SQLite
indexes in seq order, so a record the tail held and SQLite lacked at that
moment is followed by nothing SQLite has; what was indexed in between (and the
tail emptied) is in SQLite by then. A read that meets the publisher emptying
the tail and appending again sees a frame that does not check out: the
records before it are kept, and the file is read once more to tell such a
race from damage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from saltbus.errors import JournalError
from saltbus.journal.records import JournalRecord
from saltbus.journal.tail import TailDamagedError, read_all, scan, tail_path


@dataclass(frozen=True)
class TailView:
    """What a journal's tail held when it was read."""

    path: Path
    records: list[JournalRecord]  # its whole frames, in seq order
    size: int  # bytes, with the space allocated past the end
    torn: int  # bytes of a last frame cut short (a tail without the header only)
    damage: TailDamagedError | None  # a bad frame with data after it

    @property
    def first_seq(self) -> int | None:
        return self.records[0].seq if self.records else None

    @property
    def last_seq(self) -> int | None:
        return self.records[-1].seq if self.records else None

    def after(self, seq: int) -> list[JournalRecord]:
        """The records with a seq above ``seq`` (those SQLite lacks when its
        last seq is ``seq``)."""
        return [record for record in self.records if record.seq > seq]


def read_tail(journal: Path) -> TailView | None:
    """The tail of the journal at ``journal``, None when it has none. Raises
    JournalError (one line) when it exists but cannot be read."""
    path = tail_path(journal)
    view = _read(path)
    if view is not None and view.damage is not None:
        view = _read(path)  # a race with the publisher emptying it does not repeat
    return view


def _read(path: Path) -> TailView | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"cannot open the journal tail {path}: {exc.strerror}") from None
    try:
        data = read_all(fd)
    except OSError as exc:
        raise JournalError(f"cannot read the journal tail {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    decoded = scan(data, path)
    return TailView(path, decoded.records, len(data), decoded.torn, decoded.damage)

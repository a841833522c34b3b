"""The journals in a data directory: whose they are, how large, how recent.

A journal's file name is ``<socket prefix>-<digest of the sock_dir>.sqlite3``
(see :mod:`.paths`); the digest cannot be turned back into a directory, so a
daemon records its sock_dir inside the file (``meta.sock_dir``) and this
reads it from there. Journals written before that show no sock_dir.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from saltbus.errors import JournalError
from saltbus.journal.paths import JOURNAL_SUFFIX
from saltbus.journal.store import Journal
from saltbus.journal.tail import TAIL_SUFFIX
from saltbus.journal.tailview import read_tail

_NAME: Final = re.compile(r"^(?P<prefix>.+)-[0-9a-f]{12}" + re.escape(JOURNAL_SUFFIX) + "$")
# What SQLite and the publisher (the journal's tail) keep beside a journal,
# and what a client keeps beside it (saltbus.client.positions): they go with
# the journal when it is pruned.
SIDE_FILES: Final = ("-wal", "-shm", TAIL_SUFFIX)
POSITIONS_SUFFIX: Final = ".positions"


@dataclass(frozen=True)
class JournalFile:
    """One journal file of a data directory, as ``saltbus journal list`` shows it."""

    path: Path
    socket_prefix: str
    sock_dir: Path | None  # None: not recorded (older saltbus) or unreadable
    size: int  # bytes on disk, its WAL and tail included
    first_seq: int | None
    last_seq: int | None
    last_written: float  # Unix time of the last change to the file or its WAL
    problem: str | None  # why it could not be read, when it could not

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "socket_prefix": self.socket_prefix,
            "sock_dir": None if self.sock_dir is None else str(self.sock_dir),
            "size": self.size,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_written": self.last_written,
            "problem": self.problem,
        }


def journal_files(data_dir: Path) -> list[Path]:
    """The journal files in ``data_dir`` (by their names), sorted."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise JournalError(f"cannot list data directory {data_dir}: {exc.strerror}") from None
    return sorted(data_dir / name for name in names if _NAME.match(name))


def side_paths(path: Path) -> list[Path]:
    """The files and directories that belong to the journal at ``path``."""
    return [
        *(Path(f"{path}{suffix}") for suffix in SIDE_FILES),
        path.with_suffix(POSITIONS_SUFFIX),
    ]


def describe(path: Path) -> JournalFile:
    """What :class:`JournalFile` says of ``path`` (read-only; a damaged or
    foreign file is described with its problem rather than raised)."""
    match = _NAME.match(path.name)
    prefix = match.group("prefix") if match else ""
    size = 0
    last_written = 0.0
    for each in (path, Path(f"{path}-wal"), Path(f"{path}{TAIL_SUFFIX}")):
        try:
            stat = each.stat()
        except FileNotFoundError:
            continue
        size += stat.st_size
        # A reader opening the file creates an empty WAL: that is no write.
        if stat.st_size:
            last_written = max(last_written, stat.st_mtime)
    sock_dir = first = last = None
    problem = None
    try:
        # Read before SQLite's last seq (see .tailview): a killed publisher's
        # events SQLite has not indexed yet count as written.
        tail = read_tail(path)
        with Journal.open(path, readonly=True) as journal:
            sock_dir = journal.sock_dir()
            last = journal.last_seq()
            first = journal.first_seq()
        unindexed = tail.after(last) if tail is not None else []
        if unindexed:
            last = unindexed[-1].seq
            first = unindexed[0].seq if first is None else first
    except JournalError as exc:
        problem = str(exc)
    return JournalFile(path, prefix, sock_dir, size, first, last, last_written, problem)

"""The journal: every event the publisher numbered, in one SQLite file.

Appends are one transaction per call (the writer groups many batches into
one call), reads are in seq order with their filters applied inside SQLite,
retention deletes the oldest events, and named cursors remember how far a
reader has got. The file is opened by :func:`saltbus.journal.schema.connect`.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sqlite3
import time as _time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from saltbus.errors import JournalError
from saltbus.event import MatchType
from saltbus.journal import inserts
from saltbus.journal.damage import JournalDamagedError, is_damage
from saltbus.journal.query import Filters, plan
from saltbus.journal.records import JournalRecord, JournalStats
from saltbus.journal.schema import Durability, connect, has_column

__all__ = ["Durability", "Journal"]

# Retention walks the oldest events in pages of this many rows to find where
# to cut, so that the lengths it sums never sit in memory all at once.
_RETENTION_PAGE = 10_000


# What sqlite3 raises, besides sqlite3.Error, for a value it cannot bind: a
# tag that is not valid Unicode (UnicodeEncodeError), an int over 64 bits, a
# body that is not bytes.
_BIND_ERRORS: Final = (ValueError, OverflowError, TypeError)


@contextlib.contextmanager
def _sqlite_errors(action: str, path: Path) -> Iterator[None]:
    """Report SQLite's errors as JournalError, naming the file and the action;
    a damaged file as JournalDamagedError, in one line that says how to recover."""
    try:
        yield
    except (sqlite3.Error, *_BIND_ERRORS) as exc:
        if is_damage(exc):
            raise JournalDamagedError(
                path, f"is damaged ({exc}; found trying to {action} it)"
            ) from exc
        raise JournalError(f"cannot {action} journal {path}: {exc}") from exc


class Journal:
    """One SQLite file in WAL mode. Not thread-safe: one Journal per thread
    (SQLite's own check raises if a connection is used from another thread)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        durability: Durability,
        max_age: float | None,
        max_bytes: int | None,
        readonly: bool,
    ) -> None:
        # Use Journal.open(); this only wraps an already prepared connection.
        self._conn = conn
        self.path = path
        self.durability: Durability = durability
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.readonly = readonly
        self._rows_per_statement = inserts.max_rows(conn)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        durability: Durability = "batch",
        max_age: float | None = None,
        max_bytes: int | None = None,
        readonly: bool = False,
        check: bool = False,
        sock_dir: Path | None = None,
    ) -> Journal:
        """Open the journal at ``path``, creating it (and its directories, 0700)
        unless ``readonly``. ``durability``: ``"batch"`` survives the process
        being killed, ``"fsync"`` survives a power cut (each commit is synced).
        ``max_age`` (seconds) and ``max_bytes`` (of bodies) bound what
        :meth:`enforce_retention` keeps; None keeps everything.

        A damaged file raises :class:`~saltbus.journal.damage.JournalDamagedError`;
        ``check`` (the daemon's start) reads its pages first to find damage
        before it is used. ``sock_dir`` (the daemon's) is recorded in the file,
        so that ``saltbus journal list`` can say whose journal it is."""
        if max_age is not None and not (max_age > 0 and math.isfinite(max_age)):
            raise JournalError(f"max_age must be a positive number of seconds, not {max_age!r}")
        if max_bytes is not None and max_bytes < 0:
            raise JournalError(f"max_bytes must be zero or more, not {max_bytes!r}")
        conn = connect(path, durability=durability, readonly=readonly, check=check)
        journal = cls(
            conn,
            path,
            durability=durability,
            max_age=max_age,
            max_bytes=max_bytes,
            readonly=readonly,
        )
        if sock_dir is not None and not readonly:
            try:
                journal.record_sock_dir(sock_dir)
            except BaseException:
                journal.close()
                raise
        return journal

    # -- positions ----------------------------------------------------------

    def last_seq(self) -> int:
        """The highest seq ever appended (0 for a new journal), even if
        retention has since deleted it: a restarted publisher continues after it."""
        with _sqlite_errors("read", self.path):
            return int(self._conn.execute("SELECT last_seq FROM meta").fetchone()[0])

    def epoch(self) -> int | None:
        """The publisher's numbering of these seqs (None until a publisher
        opened the journal). A journal made anew gets another one, so that a
        reader holding a seq of the old one can tell it means nothing here."""
        with _sqlite_errors("read", self.path):
            value = self._conn.execute("SELECT epoch FROM meta").fetchone()[0]
        return None if value is None else int(value)

    def claim_epoch(self) -> int:
        """The epoch, chosen now (63 random bits) if the journal has none yet."""
        with _sqlite_errors("write the epoch to", self.path):
            # One statement: two publishers racing on a new file agree on one epoch.
            self._conn.execute(
                "UPDATE meta SET epoch = ? WHERE epoch IS NULL", (secrets.randbits(63),)
            )
        epoch = self.epoch()
        assert epoch is not None  # set just above, and never cleared
        return epoch

    def restore_meta(self, *, epoch: int | None, last_seq: int, sock_dir: str | None) -> None:
        """Give a journal rebuilt from a damaged one that file's epoch (None
        leaves it unset), its last seq (raised, never lowered: the events it
        salvaged may end before it) and its bus's sock_dir."""
        with _sqlite_errors("write meta to", self.path):
            self._conn.execute(
                "UPDATE meta SET epoch = ?, last_seq = max(last_seq, ?), sock_dir = ?",
                (epoch, last_seq, sock_dir),
            )

    def record_sock_dir(self, sock_dir: Path) -> None:
        """Store the (resolved) sock_dir of the bus this journal belongs to."""
        with _sqlite_errors("write the bus's sock_dir to", self.path):
            self._conn.execute("UPDATE meta SET sock_dir = ?", (str(sock_dir.resolve()),))

    def sock_dir(self) -> Path | None:
        """The sock_dir of the bus whose daemon last opened this journal (None
        before a daemon recorded it: journals of older saltbus versions)."""
        with _sqlite_errors("read", self.path):
            if not has_column(self._conn, "meta", "sock_dir"):
                return None
            value = self._conn.execute("SELECT sock_dir FROM meta").fetchone()[0]
        return None if value is None else Path(value)

    def first_seq(self) -> int | None:
        """The oldest seq still retained, None when no event is."""
        with _sqlite_errors("read", self.path):
            value = self._conn.execute("SELECT min(seq) FROM events").fetchone()[0]
        return None if value is None else int(value)

    # -- writing ------------------------------------------------------------

    def append(self, records: Sequence[JournalRecord]) -> None:
        """Store ``records`` in one transaction: all of them or none.

        Their seqs must be strictly increasing and above :meth:`last_seq`
        (gaps are allowed); otherwise nothing is stored and JournalError is
        raised, as it is for any SQLite failure.
        """
        if not records:
            return
        flat = inserts.flatten(records)
        inserts.check_increasing(flat)
        with _sqlite_errors("append to", self.path):
            self._conn.execute("BEGIN")
            try:
                # Moving last_seq first, on the condition that the batch starts
                # after it, both checks the order and takes the write lock, in
                # one statement: every statement costs the writer thread a GIL
                # hand-off, which is dear while the event loop is busy.
                moved = self._conn.execute(
                    "UPDATE meta SET last_seq = ?, count = count + ?, bytes = bytes + ? "
                    "WHERE last_seq < ?",
                    (records[-1].seq, len(records), inserts.body_bytes(flat), records[0].seq),
                ).rowcount
                if moved != 1:
                    raise JournalError(
                        f"seq {records[0].seq} is not after the journal's last seq "
                        f"{self.last_seq()}"
                    )
                inserts.insert(self._conn, flat, self._rows_per_statement)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def insert_missing(self, records: Sequence[JournalRecord]) -> int:
        """Store ``records`` whose seqs the journal lacks, in any order (a
        recovery's events found after the ones around them); seqs it holds
        already are skipped. Returns how many were stored. The running totals
        and last_seq are not moved: call :meth:`recount` once done."""
        stored = 0
        with _sqlite_errors("append to", self.path):
            self._conn.execute("BEGIN")
            try:
                for record in records:
                    stored += self._conn.execute(
                        "INSERT OR IGNORE INTO events (seq, time, tag, body) VALUES (?, ?, ?, ?)",
                        (record.seq, record.time, record.tag, record.body),
                    ).rowcount
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return stored

    def recount(self) -> None:
        """Set the running totals from the table (one scan), and last_seq to
        at least its highest seq: after :meth:`insert_missing`."""
        with _sqlite_errors("count the events of", self.path):
            self._conn.execute(
                "UPDATE meta SET count = (SELECT count(*) FROM events), "
                "bytes = (SELECT coalesce(sum(length(body)), 0) FROM events), "
                "last_seq = max(last_seq, (SELECT coalesce(max(seq), 0) FROM events))"
            )

    def _rollback(self) -> None:
        # After some errors (SQLITE_FULL, I/O) SQLite has already rolled back;
        # a second ROLLBACK then fails, and that must not hide the first error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    # -- reading ------------------------------------------------------------

    def read(
        self,
        *,
        since: int = 0,
        until: int | None = None,
        limit: int | None = None,
        tag: str = "",
        match_type: MatchType | str = MatchType.STARTSWITH,
        after_time: float | None = None,
        before_time: float | None = None,
    ) -> list[JournalRecord]:
        """Records with ``since < seq <= until`` (``until`` None: no upper
        bound), ``after_time <= time < before_time``, and a tag matching
        ``tag`` as a live subscription would (an empty tag matches all), in
        seq order, at most ``limit`` of them.

        A ``startswith`` tag uses the tag index; the other match types test
        each tag in the seq range. ``limit`` is exact for every match type.
        """
        if limit is not None and limit < 0:
            raise JournalError(f"limit must be zero or more, not {limit}")
        filters = Filters(
            since=since,
            until=until,
            limit=limit,
            tag=tag,
            match_type=MatchType.parse(match_type),
            after_time=after_time,
            before_time=before_time,
        )
        if limit == 0:
            return []
        with _sqlite_errors("read", self.path):
            sql, params = plan(self._conn, filters, self.last_seq)
            # fetchall: the statement is finished before the caller runs again,
            # so no read transaction is held open between calls.
            rows = self._conn.execute(sql, params).fetchall()
        return [JournalRecord(*row) for row in rows]

    def iter_read(
        self,
        *,
        since: int = 0,
        chunk: int = 1000,
        until: int | None = None,
        limit: int | None = None,
        tag: str = "",
        match_type: MatchType | str = MatchType.STARTSWITH,
        after_time: float | None = None,
        before_time: float | None = None,
    ) -> Iterator[JournalRecord]:
        """What :meth:`read` returns, fetched ``chunk`` records at a time, so
        that memory stays bounded however long the journal is.

        ``until`` None means "up to :meth:`last_seq` when iteration starts":
        events appended while iterating are not chased, so the iteration ends.
        Each chunk is its own short read, so a slow consumer never holds a
        read transaction open (which would stop WAL checkpoints).
        """
        if chunk < 1:
            raise JournalError(f"chunk must be at least 1, not {chunk}")
        if limit is not None and limit < 0:
            raise JournalError(f"limit must be zero or more, not {limit}")
        return self._iter_read(
            since=since,
            chunk=chunk,
            until=until,
            limit=limit,
            tag=tag,
            match_type=MatchType.parse(match_type),
            after_time=after_time,
            before_time=before_time,
        )

    def _iter_read(
        self,
        *,
        since: int,
        chunk: int,
        until: int | None,
        limit: int | None,
        tag: str,
        match_type: MatchType,
        after_time: float | None,
        before_time: float | None,
    ) -> Iterator[JournalRecord]:
        end = self.last_seq() if until is None else until
        left = limit
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            records = self.read(
                since=since,
                until=end,
                limit=size,
                tag=tag,
                match_type=match_type,
                after_time=after_time,
                before_time=before_time,
            )
            yield from records
            if len(records) < size:
                return
            since = records[-1].seq
            if left is not None:
                left -= len(records)

    # -- cursors ------------------------------------------------------------

    def get_cursor(self, name: str) -> int | None:
        """The seq stored under ``name``, None if there is none."""
        with _sqlite_errors("read", self.path):
            row = self._conn.execute("SELECT seq FROM cursors WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, name: str, seq: int) -> None:
        """Store ``seq`` under ``name`` (replacing what was there). Cursors are
        never deleted by retention; a cursor older than :meth:`first_seq` tells
        its reader that events it has not seen were deleted."""
        if not name:
            raise JournalError("a cursor needs a non-empty name")
        if seq < 0:
            raise JournalError(f"cursor seq must be zero or more, not {seq}")
        with _sqlite_errors("write a cursor to", self.path):
            self._conn.execute(
                "INSERT INTO cursors (name, seq, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated = excluded.updated",
                (name, seq, _time.time()),
            )

    def cursors(self) -> dict[str, int]:
        """Every cursor, by name."""
        with _sqlite_errors("read", self.path):
            rows = self._conn.execute("SELECT name, seq FROM cursors ORDER BY name").fetchall()
        return {str(name): int(seq) for name, seq in rows}

    # -- retention ----------------------------------------------------------

    def enforce_retention(
        self, now: float | None = None, *, max_rows: int | None = None, hold: int | None = None
    ) -> int:
        """Delete the oldest events beyond ``max_age`` and ``max_bytes``;
        return how many were deleted. Cursors and last_seq are kept.

        ``hold`` is how far the slowest consumer that must not miss events
        (a returner, the federation export) has got: events after it are
        kept however old they are, and go only when ``max_bytes`` needs the
        room, so that the size limit stays a hard bound on the disk used.

        Retention only ever cuts a prefix of the seq order, so what is kept is
        always every event from :meth:`first_seq` on, and a resume from any
        seq at or after it misses nothing. By age, the cut stops at the oldest
        event not older than ``now - max_age``: if the clock stepped back, an
        old-stamped event stays until the ones before it expire too. By size,
        the oldest events go until the bodies total at most ``max_bytes``.

        ``max_rows`` bounds the rows deleted by this call (one transaction),
        so that a caller sharing the connection with appends (the writer) can
        delete a large backlog in steps without stalling them.
        """
        if max_rows is not None and max_rows < 1:
            raise JournalError(f"max_rows must be at least 1, not {max_rows}")
        if self.max_age is None and self.max_bytes is None:
            return 0
        cutoff = None
        if self.max_age is not None:
            cutoff = (_time.time() if now is None else now) - self.max_age
        with _sqlite_errors("apply retention to", self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cut, count, size = self._retention_cut(cutoff, max_rows, hold)
                if count:
                    self._conn.execute("DELETE FROM events WHERE seq <= ?", (cut,))
                    self._conn.execute(
                        "UPDATE meta SET count = count - ?, bytes = bytes - ?", (count, size)
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return count

    def _retention_cut(
        self, cutoff: float | None, max_rows: int | None, hold: int | None
    ) -> tuple[int, int, int]:
        """Inside the open transaction: the highest seq to delete, and how many
        events and body bytes go with it ((0, 0, 0) when nothing goes).

        One walk from the oldest event, a page at a time: its cost is
        proportional to what is deleted, and only seq, time and the body's
        length (from the record header, not the body) reach Python.
        """
        excess: int | None = None
        if self.max_bytes is not None:
            (total,) = self._conn.execute("SELECT bytes FROM meta").fetchone()
            excess = int(total) - self.max_bytes
        cut = count = size = 0
        after = -(2**63)
        while True:
            rows = self._conn.execute(
                "SELECT seq, time, length(body) FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, _RETENTION_PAGE),
            ).fetchall()
            for seq, stamp, length in rows:
                expired = cutoff is not None and stamp < cutoff and (hold is None or seq <= hold)
                oversize = excess is not None and size < excess
                if not (expired or oversize) or count == max_rows:
                    return cut, count, size
                cut = int(seq)
                count += 1
                size += int(length)
            if len(rows) < _RETENTION_PAGE:
                return cut, count, size
            after = cut

    # -- reporting and lifetime ---------------------------------------------

    def stats(self) -> JournalStats:
        """What the journal holds, from the running totals (no table scan)."""
        with _sqlite_errors("read", self.path):
            last, count, size = self._conn.execute(
                "SELECT last_seq, count, bytes FROM meta"
            ).fetchone()
        return JournalStats(
            path=self.path,
            first_seq=self.first_seq(),
            last_seq=int(last),
            count=int(count),
            bytes=int(size),
        )

    def checkpoint_in_background(self) -> None:
        """Leave checkpoints to :meth:`checkpoint` from another connection:
        SQLite's automatic ones run inside a commit, and copying megabytes of
        WAL there is the commit's latency spike."""
        with _sqlite_errors("configure", self.path):
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file without waiting for
        (or blocking) the writer and readers (a PASSIVE checkpoint)."""
        with _sqlite_errors("checkpoint", self.path):
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Close the file. Idempotent."""
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else self.durability
        return f"<Journal {self.path} ({mode})>"

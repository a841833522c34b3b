"""Reading what is still readable in a damaged journal.

SQLite reads the events table (a B-tree keyed by seq) page by page; a damaged
page fails every query that touches it, and only those. So a seq range whose
query fails is split in two and each half read again, down to single seqs:
everything outside the damaged pages is read, and what is not readable is
known as seq ranges. The cost is a few failing queries per damaged page, plus
two per seq under a damaged interior page (whose whole subtree is then lost).

Rows a damaged page still returns are checked (types, strictly increasing
seqs, a body that starts with its tag): a row that fails is counted lost too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from saltbus.errors import JournalError, ProtocolError
from saltbus.journal.damage import (
    JournalDamagedError,
    describe_findings,
    is_damage,
    truncation,
    unusable,
)
from saltbus.journal.records import JournalRecord
from saltbus.journal.schema import BUSY_TIMEOUT_MS, SCHEMA_VERSION, read_past_truncation
from saltbus.journal.state_tables import StateSet, read_sets
from saltbus.journal.tailview import TailView, read_tail
from saltbus.wire import body_tag

# Rows per query while salvaging: large enough to read a healthy journal fast,
# small enough that a chunk lost to an error costs little to read again.
CHUNK: Final = 2000
EVENTS_LOST: Final = "has events that cannot be read"
# The findings of quick_check a `journal check` reports (one line each).
MAX_FINDINGS: Final = 20

# read(since, until, limit) -> records with since < seq <= until in seq order,
# at most limit; raises JournalDamagedError when a page it needs is damaged.
RangeReader = Callable[[int, int, int], list[JournalRecord]]


@dataclass
class LostRanges:
    """Seq ranges (inclusive) that could not be read, merged as they are found."""

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, first: int, last: int) -> None:
        kept = []
        for low, high in self.ranges:
            if high + 1 < first or last + 1 < low:
                kept.append((low, high))
            else:
                first, last = min(first, low), max(last, high)
        self.ranges = sorted([*kept, (first, last)])

    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    def covers(self, seq: int) -> bool:
        # Few ranges (one per damaged place): a linear test is enough.
        return any(first <= seq <= last for first, last in self.ranges)

    def without(self, seqs: list[int]) -> LostRanges:
        """These ranges less ``seqs`` (sorted)."""
        left = LostRanges()
        for first, last in self.ranges:
            start = first
            for seq in seqs:
                if start <= seq <= last:
                    if seq > start:
                        left.add(start, seq - 1)
                    start = seq + 1
            if start <= last:
                left.add(start, last)
        return left

    def describe(self) -> str:
        """``"12-40, 77"``: the ranges as a person reads them."""
        return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)


def read_around(
    read: RangeReader,
    since: int,
    until: int,
    lost: LostRanges,
    *,
    chunk: int = CHUNK,
    first: int | None = None,
    gaps: LostRanges | None = None,
) -> Iterator[JournalRecord]:
    """Every readable record with ``since < seq <= until``, in seq order; the
    seq ranges whose reads failed are added to ``lost``.

    With ``first`` (the lowest seq the journal holds; the reads must then be
    of every event), a damaged leaf page that reads as an empty one is found
    too: once a read has failed, the seqs missing between ``first`` and
    ``until`` are added to ``lost`` as well (the publisher numbers events
    without gaps; a journal rebuilt by recovery has the gaps it reported).
    The missing seqs are also added to ``gaps`` when given, failure or not.
    """
    gaps = LostRanges() if gaps is None else gaps
    expected = first
    for record in _read_ranges(read, since, until, lost, chunk):
        if expected is not None and record.seq > expected:
            gaps.add(expected, record.seq - 1)
        expected = None if first is None else record.seq + 1
        yield record
    if expected is not None and expected <= until:
        gaps.add(expected, until)
    if lost:
        for low, high in gaps.ranges:
            lost.add(low, high)


def _read_ranges(
    read: RangeReader, since: int, until: int, lost: LostRanges, chunk: int
) -> Iterator[JournalRecord]:
    pending = [(since, until)]
    while pending:
        low, high = pending.pop()
        while low < high:
            # No more rows than the range can hold: SQLite then stops at the
            # last one instead of stepping on to the page after it.
            size = min(chunk, high - low)
            try:
                records = read(low, high, size)
                _check_order(records, low, high)
            except JournalDamagedError:
                if high - low == 1:
                    lost.add(high, high)
                else:
                    middle = (low + high) // 2
                    # The lower half is popped first: records stay in seq order.
                    pending.extend([(middle, high), (low, middle)])
                break
            yield from records
            if len(records) < size:
                break
            low = records[-1].seq


def _check_order(records: list[JournalRecord], low: int, high: int) -> None:
    previous = low
    for record in records:
        if not (isinstance(record.seq, int) and previous < record.seq <= high):
            raise JournalDamagedError(Path(), "returned rows out of seq order")
        previous = record.seq


def is_sound(record: JournalRecord) -> bool:
    """Whether a row read from a damaged file is an event as the publisher stored it."""
    if not (
        isinstance(record.time, float | int)
        and isinstance(record.tag, str)
        and isinstance(record.body, bytes)
    ):
        return False
    try:
        return body_tag(record.body) == record.tag
    except ProtocolError:
        return False


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to a possibly damaged file (no schema checks)."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    read_past_truncation(conn)
    return conn


def raw_reader(conn: sqlite3.Connection, path: Path) -> RangeReader:
    """A :data:`RangeReader` over the events table of ``conn``."""

    def read(since: int, until: int, limit: int) -> list[JournalRecord]:
        try:
            rows = conn.execute(
                "SELECT seq, time, tag, body FROM events WHERE seq >= ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (since + 1, until, limit),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise JournalDamagedError(path, f"is damaged ({exc})") from exc
            raise
        return [JournalRecord(*row) for row in rows]

    return read


def _try(conn: sqlite3.Connection, sql: str) -> list[tuple[object, ...]] | None:
    """The rows of ``sql``, or None when the pages it needs are damaged."""
    try:
        return list(conn.execute(sql).fetchall())
    except sqlite3.DatabaseError:
        return None


@dataclass
class Salvage:
    """What the readable parts of a journal file say about it."""

    path: Path
    problems: list[str] = field(default_factory=list)
    readable: bool = False  # SQLite could open it as a saltbus journal
    unreachable: bool = False  # ... but found no way to its events
    last_seq: int | None = None  # from meta; None when meta is unreadable
    count: int | None = None  # events by meta's running total
    epoch: int | None = None
    sock_dir: str | None = None
    cursors: dict[str, tuple[int, float]] | None = None  # None: unreadable
    lost: LostRanges = field(default_factory=LostRanges)
    findings: list[str] = field(default_factory=list)  # quick_check's, when not "ok"
    # The other tables in the file (the reactor's state); None: not readable.
    states: list[StateSet] | None = None
    tail: TailView | None = None  # None: the journal has no tail file

    @property
    def healthy(self) -> bool:
        return not self.problems

    def unindexed(self) -> list[JournalRecord]:
        """The tail's records past SQLite's last seq (a killed publisher's
        last events, indexed at its next start)."""
        if self.tail is None:
            return []
        return self.tail.after(self.last_seq or 0)


def inspect(path: Path, conn: sqlite3.Connection | None = None) -> Salvage:
    """Open ``path`` read-only as far as it can be and read its meta and cursors.

    The events are not read here (see :func:`events`); ``problems`` gets one
    line per thing found wrong so far. ``conn`` is left open for the caller
    when given; one is opened and closed otherwise.
    """
    salvage = Salvage(path)
    # Read before SQLite's last seq, as every reader of the tail does.
    _read_tail(salvage)
    problem = unusable(path)
    if problem is not None:
        salvage.problems.append(problem)
        return salvage
    problem = truncation(path)
    if problem is not None:
        salvage.problems.append(problem)
    own = conn is None
    try:
        conn = conn or connect_readonly(path)
    except sqlite3.Error as exc:
        salvage.problems.append(f"cannot be opened by SQLite: {exc}")
        return salvage
    try:
        _inspect(conn, salvage)
    finally:
        if own:
            conn.close()
    return salvage


def _read_tail(salvage: Salvage) -> None:
    try:
        salvage.tail = read_tail(salvage.path)
    except JournalError as exc:
        salvage.problems.append(f"has a tail that cannot be read ({exc})")
        return
    damage = salvage.tail.damage if salvage.tail is not None else None
    if damage is not None:
        after = "at its start" if damage.after_seq is None else f"after seq {damage.after_seq}"
        salvage.problems.append(
            f"has a tail ({damage.path}) damaged at byte {damage.offset} ({after}): "
            "the events it holds past that point cannot be read"
        )


def _inspect(conn: sqlite3.Connection, salvage: Salvage) -> None:
    version_rows = _try(conn, "PRAGMA user_version")
    if version_rows is None:
        salvage.problems.append("has a schema that cannot be read (a damaged first page)")
        return
    version = int(str(version_rows[0][0]))
    if version == 0 or version > SCHEMA_VERSION:
        what = "not a saltbus journal" if version == 0 else f"of schema version {version}, newer"
        salvage.problems.append(f"is an SQLite file but {what}")
        return
    salvage.readable = True
    try:
        findings = conn.execute(f"PRAGMA quick_check({MAX_FINDINGS})").fetchall()
    except sqlite3.DatabaseError as exc:
        salvage.problems.append(f"has damaged pages (SQLite's quick_check stopped: {exc})")
    else:
        _report_findings(salvage, findings)
    _read_meta(conn, salvage)
    salvage.states = read_sets(conn, salvage.findings)
    if salvage.states is None:
        salvage.problems.append("has a schema whose other tables (the reactor's) cannot be read")
    for state in salvage.states or ():
        if state.problem is not None:
            salvage.problems.append(f"has {state.label} that cannot be kept ({state.problem})")


def _report_findings(salvage: Salvage, findings: list[tuple[object, ...]]) -> None:
    if [row[0] for row in findings] != ["ok"]:
        salvage.findings = [str(row[0]) for row in findings]
        salvage.problems.append(
            "has damaged pages (SQLite's quick_check: "
            f"{describe_findings([str(row[0]) for row in findings])})"
        )


def _read_meta(conn: sqlite3.Connection, salvage: Salvage) -> None:
    meta = _try(conn, "SELECT * FROM meta")
    if not meta:
        salvage.problems.append("has a meta row (last seq, epoch) that cannot be read")
    else:
        names = [column[0] for column in conn.execute("SELECT * FROM meta LIMIT 0").description]
        row = dict(zip(names, meta[0], strict=True))
        salvage.last_seq = _int_or_none(row.get("last_seq"))
        salvage.count = _int_or_none(row.get("count"))
        salvage.epoch = _int_or_none(row.get("epoch"))
        sock_dir = row.get("sock_dir")
        salvage.sock_dir = sock_dir if isinstance(sock_dir, str) else None
    cursors = _try(conn, "SELECT name, seq, updated FROM cursors")
    if cursors is None:
        salvage.problems.append("has cursors (readers' positions) that cannot be read")
    else:
        salvage.cursors = {
            str(name): (int(str(seq)), float(str(updated))) for name, seq, updated in cursors
        }


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def upper_bound(conn: sqlite3.Connection, salvage: Salvage) -> int | None:
    """The highest seq to look for: meta's last_seq, else the highest seq the
    table or its tag index can still tell (None when neither can)."""
    if salvage.last_seq is not None:
        return salvage.last_seq
    for sql in (
        "SELECT max(seq) FROM events",
        "SELECT max(seq) FROM events INDEXED BY events_tag",
    ):
        rows = _try(conn, sql)
        if rows and isinstance(rows[0][0], int):
            return rows[0][0]
    return None


def lowest_seq(conn: sqlite3.Connection) -> int | None:
    """The lowest seq the table holds by its tag index (which a damaged table
    page does not hide), else by the table itself."""
    for sql in (
        "SELECT min(seq) FROM events INDEXED BY events_tag",
        "SELECT min(seq) FROM events",
    ):
        rows = _try(conn, sql)
        if rows and isinstance(rows[0][0], int):
            return rows[0][0]
    return None


def events(conn: sqlite3.Connection, salvage: Salvage) -> Iterator[JournalRecord]:
    """Every sound event readable through ``conn``, in seq order; the seqs that
    are not (unreadable or unsound) go to ``salvage.lost``, and one problem line
    sums them up once the iteration ends."""
    upper = upper_bound(conn, salvage)
    if upper is None:
        salvage.problems.append("has no event whose seq can be read")
        salvage.unreachable = True
        return
    reader = raw_reader(conn, salvage.path)
    first = lowest_seq(conn)
    readable = 0
    gaps = LostRanges()
    for record in read_around(reader, 0, upper, salvage.lost, first=first or 1, gaps=gaps):
        if is_sound(record):
            readable += 1
            yield record
        else:
            salvage.lost.add(record.seq, record.seq)
    if not salvage.lost and salvage.count is not None and readable < salvage.count:
        # No read failed, yet events are missing: damaged pages that read as
        # empty. The seqs missing since the first are the suspects.
        for low, high in gaps.ranges:
            salvage.lost.add(low, high)
        if not salvage.lost:
            salvage.problems.append(
                f"counts {salvage.count} events in meta, but {readable} can be read"
            )
    if salvage.lost:
        salvage.problems.append(f"{EVENTS_LOST}: seqs {salvage.lost.describe()}")

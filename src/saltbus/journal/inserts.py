"""Appending records to the events table with as few SQLite calls as possible.

The writer thread shares the GIL with the publisher's event loop. The
sqlite3 module releases the GIL around every statement step, and a thread
that released it under contention may wait a whole switch interval (5 ms) to
get it back; ``executemany`` steps once per row, so under load it would
spend most of its time waiting. One multi-row ``INSERT ... VALUES (...),
(...)`` steps once per up to :data:`MAX_ROWS` rows instead, and every
per-record operation here runs in C (``attrgetter``, ``chain``, slicing,
``map``), so the writer holds the GIL as little as it can.
"""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
from collections.abc import Sequence
from typing import Final, cast

from saltbus.errors import JournalError
from saltbus.journal.records import JournalRecord

_FIELDS: Final = operator.attrgetter("seq", "time", "tag", "body")
_WIDTH: Final = 4  # columns per row, the order of _FIELDS
# Rows per statement: 1,024 rows is 4,096 parameters, under SQLite's default
# limit (32,766 since 3.32; 999 before, which connect-time checks lower us to).
MAX_ROWS: Final = 1024


def flatten(records: Sequence[JournalRecord]) -> list[object]:
    """``[seq, time, tag, body, seq, time, ...]``: the statement parameters."""
    return list(itertools.chain.from_iterable(map(_FIELDS, records)))


def check_increasing(flat: list[object]) -> None:
    """Raise JournalError unless the seqs in ``flat`` strictly increase."""
    seqs = cast("list[int]", flat[0::_WIDTH])
    if all(map(operator.lt, seqs, seqs[1:])):
        return
    for previous, seq in itertools.pairwise(seqs):
        if not previous < seq:
            raise JournalError(f"seqs must be strictly increasing: {seq} follows {previous}")


def body_bytes(flat: list[object]) -> int:
    """The total size of the bodies in ``flat``."""
    return sum(map(len, cast("list[bytes]", flat[_WIDTH - 1 :: _WIDTH])))


def max_rows(conn: sqlite3.Connection) -> int:
    """The most rows one statement may carry on ``conn`` (a power of two)."""
    per_statement = min(MAX_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _WIDTH)
    return 1 << (per_statement.bit_length() - 1)


def insert(conn: sqlite3.Connection, flat: list[object], rows_per_statement: int) -> None:
    """Insert every row of ``flat`` (inside the caller's transaction).

    Full statements of ``rows_per_statement`` rows, then the remainder in
    power-of-two pieces: at most ~11 distinct SQL texts ever exist, so each
    is prepared once and then found in the connection's statement cache.
    """
    total = len(flat) // _WIDTH
    done = 0
    while done < total:
        rows = min(rows_per_statement, 1 << ((total - done).bit_length() - 1))
        conn.execute(_statement(rows), flat[done * _WIDTH : (done + rows) * _WIDTH])
        done += rows


@functools.lru_cache(maxsize=32)
def _statement(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return f"INSERT INTO events (seq, time, tag, body) VALUES {values}"

"""Real journal files, and the ways the tests damage them.

Pages are found by the SQLite file format (the b-tree page type is the first
byte of a page, after the 100-byte file header on page 1), so a test can
damage a leaf of the events table, or an interior page above leaves, and know
from the bytes it overwrote which events were on the damaged pages.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Final

from saltbus.journal import Journal, JournalRecord
from saltbus.wire import pack_body

PAGE: Final = 4096  # the page size SQLite gives a new file
TABLE_LEAF: Final = 0x0D
TABLE_INTERIOR: Final = 0x05
CURSOR: Final = "reader"


def event(seq: int) -> JournalRecord:
    # Every body is different (its seq in the tag and the data), so that it
    # can be looked for in a page's bytes.
    tag = f"salt/job/{seq:08d}/ret"
    return JournalRecord(seq, 1_000.0 + seq / 4, tag, pack_body(tag, {"n": seq, "fill": "x" * 90}))


def build_journal(path: Path, count: int, sock_dir: Path | None = None) -> list[JournalRecord]:
    """A journal at ``path`` with events 1..count, an epoch and one cursor."""
    records = [event(seq) for seq in range(1, count + 1)]
    with Journal.open(path, sock_dir=sock_dir) as journal:
        journal.claim_epoch()
        journal.append(records)
        journal.set_cursor(CURSOR, count // 3)
    return records


def page_types(path: Path) -> dict[int, int]:
    data = path.read_bytes()
    types = {}
    for number in range(1, len(data) // PAGE + 1):
        offset = (number - 1) * PAGE + (100 if number == 1 else 0)
        types[number] = data[offset]
    return types


def events_root(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events'"
        ).fetchone()
    finally:
        conn.close()
    return int(root)


def events_on_pages(path: Path, pages: list[int], records: list[JournalRecord]) -> set[int]:
    """The seqs whose body is in the bytes of ``pages`` (before they are damaged)."""
    data = path.read_bytes()
    chunks = [data[(n - 1) * PAGE : n * PAGE] for n in pages]
    return {r.seq for r in records if any(r.body in chunk for chunk in chunks)}


def middle_leaves(path: Path, count: int = 2) -> list[int]:
    """``count`` consecutive table-leaf pages of the events table from the middle of the file."""
    types = page_types(path)
    numbers = sorted(types)
    for number in numbers[len(numbers) // 2 :]:
        run = list(range(number, number + count))
        if all(types.get(n) == TABLE_LEAF for n in run):
            return run
    raise AssertionError(f"no {count} consecutive table leaves in {path}")


def interior_page(path: Path) -> int:
    """An interior page of the events table other than its root (its leaves are intact)."""
    root = events_root(path)
    for number, kind in page_types(path).items():
        if kind == TABLE_INTERIOR and number != root:
            return number
    raise AssertionError(f"no interior page below the root in {path}; add events")


def overwrite_pages(path: Path, pages: list[int], seed: int = 13) -> None:
    """Random bytes over whole ``pages`` (the first byte of each is made an
    invalid page type, so that SQLite cannot take the page for a valid one)."""
    rng = random.Random(seed)
    with open(path, "r+b") as file:
        for number in pages:
            garbage = bytearray(rng.randbytes(PAGE))
            garbage[0] = 0
            file.seek((number - 1) * PAGE)
            file.write(garbage)


def random_bytes_at(path: Path, offset: int, size: int, seed: int = 7) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(random.Random(seed).randbytes(size))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


def seqs(path: Path) -> list[int]:
    with Journal.open(path, readonly=True) as journal:
        return [r.seq for r in journal.iter_read()]


def add_reactor_state(path: Path, groups: int = 2000) -> dict[str, int]:
    """The reactor's state tables in the journal at ``path``, made by the
    reactor's own stores, with rows: ``groups`` rule groups (enough for
    several pages), their seq, a firing and an open job. Returns the rows per table."""
    from saltbus.reactor.missing_store import OpenJobStore  # noqa: PLC0415
    from saltbus.reactor.multi.store import RuleStateStore  # noqa: PLC0415

    RuleStateStore(path, "r1").close()
    OpenJobStore(path, "r1").close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO reactor_rule_groups VALUES ('r1', 'count', ?, 'fp', ?)",
            [(f"minion{n:05d}", f'{{"n": {n}, "pad": "{"s" * 100}"}}') for n in range(groups)],
        )
        conn.execute("INSERT INTO reactor_rule_meta VALUES ('r1', 42, 7, 1000.0)")
        conn.execute("INSERT INTO reactor_rule_firings VALUES ('r1', 'f1', 'tag', '{}')")
        conn.execute("INSERT INTO reactor_open_jobs VALUES ('r1', 'j1', '{}')")
        conn.execute("INSERT INTO reactor_open_jobs_seq VALUES ('r1', 7, 42)")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {
        "reactor_rule_groups": groups,
        "reactor_rule_meta": 1,
        "reactor_rule_firings": 1,
        "reactor_open_jobs": 1,
        "reactor_open_jobs_seq": 1,
    }


def table_leaves(path: Path, table: str) -> list[int]:
    """The leaf pages of ``table`` (SQLite's dbstat)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    return [int(row[0]) for row in rows]


def table_rows(path: Path, table: str) -> int | None:
    """How many rows ``table`` has (None: no such table)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()

"""Telling a damaged journal file from a healthy one, and saying what is wrong.

A journal can be damaged by what SQLite cannot prevent: a disk that returns
other bytes, a file truncated by a full or failing disk, a copy cut short,
another program writing into it. Each is named here in one line that says
what the file is, so that a command can refuse it plainly and point to
``saltbus journal recover`` instead of failing later with a traceback.

Only the standard library is needed: the header is read as bytes, and the
SQLite checks run on a connection the caller opened.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from saltbus.errors import JournalError

SQLITE_MAGIC: Final = b"SQLite format 3\x00"
HEADER_SIZE: Final = 100
# SQLite's primary result codes (the low byte of an extended code) that mean
# the file itself is wrong, as opposed to locked, full or unwritable.
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
# What the fix of a damaged journal is, when the caller cannot name the bus.
RECOVER_COMMAND: Final = "saltbus journal recover"
# How many of quick_check's findings a one-line message quotes.
_QUOTED_FINDINGS: Final = 1


class JournalDamagedError(JournalError):
    """The journal file is damaged, empty, truncated or not a journal at all.

    ``problem`` says what the file is, without the path; ``fix`` is the command
    that repairs it (the CLI fills in the bus's options).
    """

    def __init__(self, path: Path, problem: str, fix: str = RECOVER_COMMAND) -> None:
        super().__init__(
            f"journal {path} {problem}; `{fix}` keeps what is readable and starts a fresh journal"
        )
        self.path = path
        self.problem = problem
        self.fix = fix

    def with_fix(self, fix: str) -> JournalDamagedError:
        """The same error, naming ``fix`` (a command with the bus's options)."""
        return JournalDamagedError(self.path, self.problem, fix)


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` (an sqlite3 error) says the file is malformed or not a database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def header_problem(path: Path) -> str | None:
    """What is wrong with the file at ``path`` judged by its size and its first
    100 bytes (None: it looks like an SQLite file of the size it claims).

    A missing file is not a problem here: the caller decides whether to create it.
    """
    return unusable(path) or truncation(path)


def unusable(path: Path) -> str | None:
    """Why SQLite cannot read anything from ``path`` at all (empty, not SQLite,
    a header that makes no sense), or None."""
    try:
        with open(path, "rb") as file:
            header = file.read(HEADER_SIZE)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return "is a directory, not a journal file"
    except OSError:
        # Unreadable (permissions): SQLite will say so in its own words.
        return None
    if not header:
        if _wal_holds_data(path):
            return None  # a journal whose every page is still in its WAL
        return "is an empty file (0 bytes): whatever it held is gone"
    if not header.startswith(SQLITE_MAGIC[: len(header)]):
        return (
            f"is not an SQLite file (it starts with {header[:16]!r}): a foreign file "
            "or an overwritten header"
        )
    if len(header) < HEADER_SIZE:
        return f"is truncated: {len(header)} bytes, less than an SQLite header"
    page_size = _page_size(header)
    if page_size < 512 or page_size & (page_size - 1):
        return f"has a damaged header (page size {page_size})"
    return None


def truncation(path: Path) -> str | None:
    """How ``path`` is shorter than its header says (SQLite can still read the
    pages that are there), or None."""
    try:
        with open(path, "rb") as file:
            header = file.read(HEADER_SIZE)
            size = os.fstat(file.fileno()).st_size
    except OSError:
        return None
    if len(header) < HEADER_SIZE or not header.startswith(SQLITE_MAGIC):
        return None
    pages = int.from_bytes(header[28:32], "big")
    # The page count is valid only when the "version valid for" number matches
    # the change counter (older writers left it stale).
    pages_valid = header[24:28] == header[92:96] and pages > 0
    expected = pages * _page_size(header)
    if pages_valid and size < expected and not _wal_holds_data(path):
        return f"is truncated: {size} bytes where its header says {expected}"
    return None


def _page_size(header: bytes) -> int:
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def _wal_holds_data(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except OSError:
        return False


def check_header(path: Path, *, truncated_ok: bool = False) -> None:
    """Raise :class:`JournalDamagedError` when :func:`header_problem` finds one
    (with ``truncated_ok``, only when the file cannot be read at all)."""
    problem = unusable(path) if truncated_ok else header_problem(path)
    if problem is not None:
        raise JournalDamagedError(path, problem)


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """Run SQLite's ``quick_check`` (every page of every B-tree read once, no
    index cross-check) and raise :class:`JournalDamagedError` naming its first finding."""
    try:
        findings = [str(row[0]) for row in conn.execute("PRAGMA quick_check(20)")]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise JournalDamagedError(path, f"is damaged ({exc})") from exc
        raise
    if findings == ["ok"]:
        return
    raise JournalDamagedError(path, f"is damaged ({describe_findings(findings)})")


def describe_findings(findings: list[str]) -> str:
    """quick_check's or integrity_check's findings, shortened to one line."""
    lines = [
        line.strip()
        for finding in findings
        for line in finding.splitlines()
        if line.strip() and not line.startswith("***")
    ]
    quoted = "; ".join(lines[:_QUOTED_FINDINGS]) or "unknown damage"
    more = len(lines) - _QUOTED_FINDINGS
    return f"{quoted} and {more} more finding(s)" if more > 0 else quoted


def edge_check(conn: sqlite3.Connection, path: Path, rows: int) -> None:
    """Read the schema, ``meta``, the cursors, and the oldest and newest
    ``rows`` events: the pages a publisher touches first (its appends at the
    newest end, retention at the oldest). Raises :class:`JournalDamagedError`."""
    statements = (
        "SELECT * FROM sqlite_master",
        "SELECT * FROM meta",
        "SELECT * FROM cursors",
        "SELECT seq, time, tag, body FROM events ORDER BY seq LIMIT ?",
        "SELECT seq, time, tag, body FROM events ORDER BY seq DESC LIMIT ?",
    )
    try:
        for sql in statements:
            conn.execute(sql, (rows,) if "?" in sql else ()).fetchall()
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise JournalDamagedError(path, f"is damaged ({exc})") from exc
        raise

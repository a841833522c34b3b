"""What a failed append means: the batch, or the journal's file.

A batch that cannot be stored (a seq out of order, a row SQLite refuses)
fails alone; a file that cannot be written (full, read-only, I/O error,
damage) fails every batch after it too, so the writer must stop committing
until a probe succeeds (see :mod:`saltbus.journal.writer`).
"""

from __future__ import annotations

import sqlite3

from saltbus.errors import JournalError, JournalWriteError


def as_journal_error(exc: Exception) -> JournalError:
    """The error a batch failed with: a :class:`JournalWriteError` when the
    journal's file is what failed (so later batches would fail too), a plain
    JournalError when the batch itself could not be stored."""
    cause = exc.__cause__ if isinstance(exc, JournalError) else exc
    if file_failed(cause):
        error: JournalError = JournalWriteError(reason(cause), str(exc))
    elif isinstance(exc, JournalError):
        return exc
    else:
        error = JournalError(f"cannot journal the batch: {exc}")
    error.__cause__ = cause
    return error


def file_failed(exc: BaseException | None) -> bool:
    # IntegrityError and the like are about one batch's rows; OperationalError
    # (full, read-only, locked, I/O) and a damaged file are about the journal.
    if isinstance(exc, OSError | sqlite3.OperationalError):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc,
        sqlite3.IntegrityError
        | sqlite3.InterfaceError
        | sqlite3.ProgrammingError
        | sqlite3.DataError,
    )


def reason(exc: BaseException | None) -> str:
    """What an operator is to fix, in a few words."""
    text = str(exc).lower()
    if "disk is full" in text or "no space" in text:
        return "disk full"
    if "readonly" in text or "read-only" in text:
        return "read-only"
    if "malformed" in text or "not a database" in text:
        return "damaged journal"
    if "i/o" in text:
        return "I/O error"
    if "locked" in text or "busy" in text:
        return "journal locked"
    return str(exc) or type(exc).__name__

"""Opening a journal file: directories, permissions, pragmas and the schema.

Everything about *how* the SQLite file is set up lives here, so that the
store's methods can assume a connection in WAL mode with the current schema.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Final, Literal

from saltbus.errors import JournalError
from saltbus.journal.damage import (
    JournalDamagedError,
    check_header,
    edge_check,
    is_damage,
    quick_check,
    truncation,
)

Durability = Literal["batch", "fsync"]

SCHEMA_VERSION: Final = 3
# The oldest schema a read-only connection can use as it is: version 3 only
# added a column that readers do without.
READABLE_SINCE: Final = 2

# The start-up check (``check=True``) reads every page with quick_check up to
# this size; measured on a 250 MB journal of 800,000 events, quick_check took
# 0.2 s with the file in the page cache and 5 s from disk, which is too long
# for a daemon's start. Above it, only the pages a publisher touches first
# (schema, meta, cursors, the oldest and newest events) are read.
QUICK_CHECK_MAX_BYTES: Final = 64 * 1024 * 1024
_DATA_DIR_HINT: Final = "give a writable --data-dir (data_dir in the config), or --journal none"
EDGE_CHECK_ROWS: Final = 1000

# synchronous=NORMAL in WAL mode syncs only at checkpoints: a commit survives
# the process being killed (the WAL is in the OS page cache) but not a power
# cut. FULL syncs the WAL at every commit, so a commit is on disk when it returns.
_SYNCHRONOUS: Final[dict[str, str]] = {"batch": "NORMAL", "fsync": "FULL"}

# Checkpoint every ~16 MB of WAL (4096 pages of 4 KB) rather than SQLite's
# 4 MB: at 100,000 events/s of ~250 bytes the default would checkpoint several
# times a second, each one copying pages the next batch dirties again.
WAL_AUTOCHECKPOINT_PAGES: Final = 4096
# After a checkpoint, truncate the WAL file back to this size, so that a burst
# does not leave a large WAL on disk for good.
JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
# How long a statement waits for another connection's lock (a checkpoint, or
# a second process creating the schema) before failing.
BUSY_TIMEOUT_MS: Final = 5000
# 16 MB of page cache (negative = KiB): the tag index's upper levels and the
# table's right edge stay hot under a steady append load.
CACHE_SIZE_KIB: Final = -16384

_SCHEMA_V1: Final = """
CREATE TABLE events (
    seq  INTEGER PRIMARY KEY,  -- the rowid itself: appends go to the B-tree's right edge
    time REAL    NOT NULL,     -- server receive time, Unix epoch seconds
    tag  TEXT    NOT NULL,
    body BLOB    NOT NULL      -- the frame body as received, never decoded here
);
-- (tag) is implicitly (tag, seq): SQLite appends the rowid to every index entry,
-- so a tag-prefix query is a covering range scan.
CREATE INDEX events_tag ON events (tag);
-- One row of running totals, kept in the same transactions as the events, so
-- that last_seq survives retention deleting every event and counting needs no scan.
CREATE TABLE meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
);
INSERT INTO meta (id, last_seq, count, bytes) VALUES (1, 0, 0, 0);
CREATE TABLE cursors (
    name    TEXT    PRIMARY KEY,
    seq     INTEGER NOT NULL,
    updated REAL    NOT NULL
) WITHOUT ROWID;
"""

# Version 1 kept the publisher's numbering (its epoch) as a cursor under a
# reserved name, where any cursor writer could clobber it; it is journal-wide
# state, so it lives in meta. NULL until a publisher first opens the file.
_SCHEMA_V2: Final = """
ALTER TABLE meta ADD COLUMN epoch INTEGER;
UPDATE meta SET epoch = (SELECT seq FROM cursors WHERE name = 'saltbus:epoch');
DELETE FROM cursors WHERE name = 'saltbus:epoch'
"""

# The sock_dir of the bus whose daemon last opened the file (NULL until one
# has): the file's name is a digest of it, so `saltbus journal list` needs it
# stored to say which bus a journal belongs to.
_SCHEMA_V3: Final = """
ALTER TABLE meta ADD COLUMN sock_dir TEXT
"""

# Index i holds the script that takes a file from version i to version i + 1.
_MIGRATIONS: Final[tuple[str, ...]] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)


def connect(
    path: Path, *, durability: Durability, readonly: bool, check: bool = False
) -> sqlite3.Connection:
    """A connection to the journal at ``path``, ready for the store to use.

    Raises :class:`JournalDamagedError` (a :class:`JournalError`) when the
    file is empty, truncated, not SQLite, not a journal, or SQLite finds it
    malformed; with ``check``, the file's pages are checked first (see
    :data:`QUICK_CHECK_MAX_BYTES`). Raises :class:`JournalError` when it cannot
    be opened otherwise or was written by a newer saltbus.
    """
    if durability not in _SYNCHRONOUS:
        raise JournalError(f"unknown durability {durability!r}; use 'batch' or 'fsync'")
    try:
        # A reader can still read the pages a truncated file has; a daemon
        # must not append to it.
        check_header(path, truncated_ok=readonly)
        conn = _connect_readonly(path) if readonly else _connect_writable(path, durability)
        try:
            if check:
                _check_pages(conn, path)
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        if is_damage(exc):
            raise JournalDamagedError(path, f"is damaged ({exc})") from exc
        raise JournalError(f"cannot open journal {path}: {exc}") from exc
    return conn


def _check_pages(conn: sqlite3.Connection, path: Path) -> None:
    if path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
        quick_check(conn, path)
    else:
        edge_check(conn, path, EDGE_CHECK_ROWS)


def _connect_writable(path: Path, durability: Durability) -> sqlite3.Connection:
    _make_private_dirs(path.parent)
    _create_journal_file(path)
    # isolation_level=None: the store issues BEGIN/COMMIT itself, so that an
    # append is exactly one transaction and reads take no write lock.
    # check_same_thread=False: the journal writer commits on the publisher's
    # event loop when it is idle, and on its own thread under load, never both
    # at once (its lock), so the connection moves between two threads.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path} cannot use WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size = {CACHE_SIZE_KIB}")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    # mode=ro: this connection can never write, so ``saltbus history`` can read
    # a live daemon's journal without any risk to it. WAL lets it read while
    # the daemon commits, seeing each commit as soon as it is made.
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if truncation(path) is not None:
            read_past_truncation(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        _check_version(version, path)
        if version == 0:
            raise JournalDamagedError(path, "is an SQLite file but not a saltbus journal")
        if version < READABLE_SINCE:
            raise JournalError(
                f"journal {path} has schema version {version}; open it writable once "
                f"(start the daemon) to upgrade it to {SCHEMA_VERSION}"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def read_past_truncation(conn: sqlite3.Connection) -> None:
    """Let a read-only connection read the pages a truncated file still has.

    SQLite refuses a file shorter than its header says as a whole; with
    writable_schema it takes the file's own size instead. The connection is
    read-only (mode=ro), so nothing can be written through it.
    """
    conn.execute("PRAGMA writable_schema = ON")


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` (a read-only connection may be on an older schema)."""
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # BEGIN IMMEDIATE takes the write lock before reading the version, so two
    # processes opening a new file at once cannot both create the schema.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        _check_version(version, path)
        if version == 0 and _has_tables(conn):
            raise JournalDamagedError(path, "is an SQLite file but not a saltbus journal")
        for step in range(version, SCHEMA_VERSION):
            for statement in _statements(_MIGRATIONS[step]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal {path} has schema version {version}, newer than this saltbus "
            f"understands ({SCHEMA_VERSION}); upgrade saltbus"
        )


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    return bool(row[0])


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT the open transaction first; splitting keeps
    # the whole migration inside one transaction. The scripts hold no ';' in
    # literals or comments, so a plain split is exact.
    return [part.strip() for part in script.split(";") if part.strip()]


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents 0700 (``mkdir -p`` would
    leave the parents at the umask's mode). Existing directories are left alone."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:
            pass  # another process made it first (or it is a file: said below)
        except OSError as exc:
            raise JournalError(
                f"cannot create the journal's directory {each}: {exc.strerror}; {_DATA_DIR_HINT}"
            ) from None
    if not directory.is_dir():
        raise JournalError(f"journal directory {directory} is not a directory; {_DATA_DIR_HINT}")


def _create_journal_file(path: Path) -> None:
    """Create the journal at ``path`` with its schema, unless a file is there.

    The file is made whole under a temporary name and linked into place, so
    that a journal's path never shows an empty or half-made file: an empty
    file there is then always damage (a truncation), never a journal being born.
    """
    if path.exists():
        return
    draft = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    _create_private_file(draft, path)
    try:
        conn = sqlite3.connect(draft, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn, draft)
        finally:
            conn.close()  # the last connection checkpoints the WAL into the file
        _put_in_place(draft, path)
    except OSError as exc:
        raise JournalError(
            f"cannot create journal {path}: {exc.strerror or exc}; {_DATA_DIR_HINT}"
        ) from None
    finally:
        for leftover in (draft, Path(f"{draft}-wal"), Path(f"{draft}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _put_in_place(draft: Path, path: Path) -> None:
    """Give ``draft`` the name ``path`` unless a file has it (another process
    made the journal first: that one is kept)."""
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    except OSError as exc:
        # A file system without hard links: a rename, which would replace a
        # journal made meanwhile, so only after checking there is none.
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        if not path.exists():
            os.rename(draft, path)


def _create_private_file(path: Path, journal: Path) -> None:
    # The journal holds every event of the bus, which only the bus's user may
    # read (DESIGN.md, Security). SQLite would create the file 0644; making it
    # first, empty, 0600 is enough, and SQLite gives its -wal and -shm files
    # the database file's mode.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise JournalError(
            f"cannot create journal {journal}: {exc.strerror or exc}; {_DATA_DIR_HINT}"
        ) from None
    os.close(fd)

"""Where a reactor keeps its open jobs (:mod:`.missing`) across restarts: a
table of its own in the bus journal's SQLite file.

Written as :class:`~saltbus.client.positions.PositionStore` writes a
position, whole or not at all: the jobs that changed, the ones closed and
the sequence number the state reflects go in one transaction, so a reactor
killed at any moment finds a state and the seq it matches, and catch-up feeds
it what came after. Rows are per reactor name, so reactors of one bus keep
their own. The publisher never reads these tables.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from saltbus.errors import JournalError
from saltbus.reactor.missing import OpenJob

# As long as the journal's own statements wait for the publisher's lock.
BUSY_TIMEOUT: Final = 5.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reactor_open_jobs (
    reactor TEXT NOT NULL,
    jid     TEXT NOT NULL,
    job     TEXT NOT NULL,  -- JSON: OpenJob.to_dict()
    PRIMARY KEY (reactor, jid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reactor_open_jobs_seq (
    reactor TEXT PRIMARY KEY,
    epoch   INTEGER,           -- the publisher's numbering the seq is in
    seq     INTEGER NOT NULL   -- the state reflects every event up to it
) WITHOUT ROWID;
"""


class OpenJobStore:
    """One reactor's open jobs in ``journal``. Used from one thread at a time."""

    def __init__(self, journal: Path, reactor: str) -> None:
        self.path = journal
        self.reactor = reactor
        try:
            # mode=rw: the publisher creates the journal; this never makes one.
            self._conn = sqlite3.connect(
                f"file:{journal}?mode=rw",
                uri=True,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot keep open jobs in journal {journal}: {exc}") from exc

    def load(self) -> tuple[int | None, int | None, list[OpenJob]]:
        """(epoch, seq, open jobs) as last saved; (None, None, []) if never."""
        try:
            row = self._conn.execute(
                "SELECT epoch, seq FROM reactor_open_jobs_seq WHERE reactor = ?", (self.reactor,)
            ).fetchone()
            rows = self._conn.execute(
                "SELECT job FROM reactor_open_jobs WHERE reactor = ?", (self.reactor,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read open jobs from journal {self.path}: {exc}") from exc
        if row is None:
            return None, None, []
        jobs = [OpenJob.from_dict(json.loads(text)) for (text,) in rows]
        jobs.sort(key=lambda job: job.deadline)
        return row[0], row[1], jobs

    def save(
        self,
        changed: Iterable[Mapping[str, Any]],
        closed: Iterable[str],
        epoch: int | None,
        seq: int,
    ) -> None:
        """``changed``: jobs as :meth:`OpenJob.to_dict` gives them."""
        rows = [(self.reactor, str(j["jid"]), json.dumps(j, default=str)) for j in changed]
        self._write(
            "save open jobs in",
            (
                "DELETE FROM reactor_open_jobs WHERE reactor = ? AND jid = ?",
                [(self.reactor, jid) for jid in closed],
            ),
            ("INSERT OR REPLACE INTO reactor_open_jobs (reactor, jid, job) VALUES (?, ?, ?)", rows),
            (
                "INSERT OR REPLACE INTO reactor_open_jobs_seq (reactor, epoch, seq) "
                "VALUES (?, ?, ?)",
                [(self.reactor, epoch, seq)],
            ),
        )

    def clear(self) -> None:
        """Forget this reactor's jobs (the publisher numbers its events anew)."""
        self._write(
            "clear open jobs in",
            ("DELETE FROM reactor_open_jobs WHERE reactor = ?", [(self.reactor,)]),
            ("DELETE FROM reactor_open_jobs_seq WHERE reactor = ?", [(self.reactor,)]),
        )

    def _write(self, action: str, *statements: tuple[str, Sequence[tuple[object, ...]]]) -> None:
        """The statements in one transaction: all of them, or none."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    conn.executemany(sql, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot {action} journal {self.path}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> OpenJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

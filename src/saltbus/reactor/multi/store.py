"""The rules' state in the bus's journal: a table of its own in its SQLite file.

One row per open group (``reactor``, ``rule``, ``key``: the rule's
definition fingerprint and the group as JSON) and one row per reactor with
the seq the state reflects and the journal's epoch, and one row per
firing whose reactions have not finished (:mod:`.pending`). Writes are batched (the
reactor flushes what changed every ``SAVE_INTERVAL`` and before it saves its
position, in one transaction), so the state saved always reflects every
event up to the position saved: catch-up after a restart feeds the rules
only the events after the state's seq.

The same connection reads the journal's receive times (``events.time``), in
chunks, which is the time rules run on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from saltbus.errors import JournalError
from saltbus.reactor.multi.pending import FiringRow
from saltbus.reactor.multi.ruleset import Change

BUSY_TIMEOUT: Final = 5.0
TIMES_CHUNK: Final = 4096
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reactor_rule_groups (
    reactor     TEXT NOT NULL,
    rule        TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    PRIMARY KEY (reactor, rule, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reactor_rule_meta (
    reactor TEXT PRIMARY KEY,
    seq     INTEGER,
    epoch   INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reactor_rule_firings (
    reactor TEXT NOT NULL,
    id      TEXT NOT NULL,
    tag     TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (reactor, id)
) WITHOUT ROWID;
"""

Row = tuple[str, str, str, str]


class RuleStateStore:
    """The rule state of reactor ``reactor`` in the journal ``journal``."""

    def __init__(self, journal: Path, reactor: str) -> None:
        self.path = journal
        self.reactor = reactor
        self._times: dict[int, float] = {}
        try:
            self._conn = sqlite3.connect(journal, timeout=BUSY_TIMEOUT, isolation_level=None)
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot keep the rules' state in journal {journal}: {exc}"
            ) from None

    def load(self) -> tuple[int | None, int | None, list[Row]]:
        """(epoch, seq, groups) saved: the state reflects the events up to seq."""
        try:
            meta = self._conn.execute(
                "SELECT epoch, seq FROM reactor_rule_meta WHERE reactor = ?", (self.reactor,)
            ).fetchone()
            rows = self._conn.execute(
                "SELECT rule, fingerprint, key, state FROM reactor_rule_groups WHERE reactor = ?",
                (self.reactor,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the rules' state from {self.path}: {exc}") from None
        epoch, seq = meta if meta else (None, None)
        return epoch, seq, [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def load_firings(self) -> list[FiringRow]:
        """The firings saved with reactions not finished: ``(id, tag, data)``."""
        try:
            rows = self._conn.execute(
                "SELECT id, tag, data FROM reactor_rule_firings WHERE reactor = ? ORDER BY id",
                (self.reactor,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the rules' state from {self.path}: {exc}") from None
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def save(
        self,
        epoch: int | None,
        seq: int | None,
        changes: Iterable[Change],
        dropped: Iterable[str],
        *,
        everything: bool = False,
        now: float = 0.0,
        firings: Iterable[FiringRow] = (),
        finished: Iterable[str] = (),
    ) -> None:
        """Write ``changes`` and the seq they reflect, with the ``firings``
        whose reactions have not finished and without the ``finished`` ones,
        in one transaction (a group that fired and its firing are saved
        together); ``everything``: ``changes`` and ``firings`` are the whole
        state (what was saved goes)."""
        me = self.reactor
        upserts = [(me, c.rule, c.key, c.fingerprint, c.state) for c in changes if c.state]
        deletes = [(me, c.rule, c.key) for c in changes if c.state is None]
        try:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if everything:
                    conn.execute("DELETE FROM reactor_rule_groups WHERE reactor = ?", (me,))
                    conn.execute("DELETE FROM reactor_rule_firings WHERE reactor = ?", (me,))
                conn.executemany(
                    "DELETE FROM reactor_rule_groups WHERE reactor = ? AND rule = ?",
                    [(me, rule) for rule in dropped],
                )
                conn.executemany(
                    "DELETE FROM reactor_rule_groups WHERE reactor = ? AND rule = ? AND key = ?",
                    deletes,
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO reactor_rule_groups "
                    "(reactor, rule, key, fingerprint, state) VALUES (?, ?, ?, ?, ?)",
                    upserts,
                )
                conn.executemany(
                    "DELETE FROM reactor_rule_firings WHERE reactor = ? AND id = ?",
                    [(me, firing) for firing in finished],
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO reactor_rule_firings (reactor, id, tag, data) "
                    "VALUES (?, ?, ?, ?)",
                    [(me, *row) for row in firings],
                )
                conn.execute(
                    "INSERT OR REPLACE INTO reactor_rule_meta (reactor, seq, epoch, updated) "
                    "VALUES (?, ?, ?, ?)",
                    (me, seq, epoch, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"cannot save the rules' state in {self.path}: {exc}") from None

    def time_of(self, seq: int) -> float | None:
        """When the publisher received event ``seq`` (None: not in the journal)."""
        found = self._times.get(seq)
        if found is not None:
            return found
        try:
            rows = self._conn.execute(
                "SELECT seq, time FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (seq, TIMES_CHUNK),
            ).fetchall()
        except sqlite3.Error:
            return None
        self._times = {int(s): float(t) for s, t in rows}
        return self._times.get(seq)

    def close(self) -> None:
        self._conn.close()

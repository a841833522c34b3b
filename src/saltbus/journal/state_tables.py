"""The tables other parts of saltbus keep in a journal's file, for check and recover.

The reactor keeps its state in the bus journal's SQLite file, beside the
events (so that it moves with the journal and commits where the events are):
the rules' windows and counters with the seq they reflect, the firings whose
reactions had not finished, and the open jobs of its missed-returns watch. The
journal itself never reads them; ``journal check`` reports them and ``journal
recover`` copies the readable ones into the fresh file.

Tables that are only right together (a state and the seq it reflects) form a
*set*, kept whole or not at all: a state kept without its seq, or a seq without
its state, would make the reactor count events twice or not at all. A set that
is not kept is simply absent from the fresh file, which its owner handles as a
first start. The names are the reactor's (saltbus.reactor.multi.store and
saltbus.reactor.missing_store, above this layer; a test holds them equal);
any other table found is a set of its own.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import Final

# (what the set is, its tables), as the reactor names them.
KNOWN_SETS: Final = (
    ("the rules' windows and counters", ("reactor_rule_groups", "reactor_rule_meta")),
    ("the rules' unfinished firings", ("reactor_rule_firings",)),
    ("the reactor's open jobs", ("reactor_open_jobs", "reactor_open_jobs_seq")),
)
# The journal's own tables (saltbus.journal.schema), copied by recover itself.
JOURNAL_TABLES: Final = frozenset({"events", "meta", "cursors"})
# quick_check names a damaged B-tree by its root page: "Tree 7 page 12 ...".
_TREE: Final = re.compile(r"\bTree (\d+)\b")

Row = tuple[object, ...]


@dataclass
class StateTable:
    """One table: how to make it, and its rows (None when they cannot be read)."""

    name: str
    sql: str
    indexes: list[str]
    rows: list[Row] | None
    problem: str | None = None


@dataclass
class StateSet:
    """Tables kept together; ``problem`` says why the set cannot be kept."""

    label: str
    tables: list[StateTable] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        for table in self.tables:
            if table.problem is not None:
                return f"{table.name}: {table.problem}"
        return None

    @property
    def rows(self) -> int:
        return sum(len(table.rows or ()) for table in self.tables)

    def describe(self) -> str:
        names = ", ".join(table.name for table in self.tables)
        return f"{self.label} ({names}: {self.rows} rows)"


def read_sets(conn: sqlite3.Connection, findings: list[str] | None = None) -> list[StateSet] | None:
    """The sets of state tables in the file open at ``conn``, rows read; None
    when the schema itself cannot be read. ``findings`` (quick_check's lines)
    mark a table whose B-tree it found damaged even when its rows read."""
    try:
        schema = conn.execute(
            "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master "
            "WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    except sqlite3.DatabaseError:
        return None
    damaged_trees = {int(tree) for line in findings or () for tree in _TREE.findall(line)}
    tables: dict[str, StateTable] = {}
    for kind, name, _owner, root, sql in schema:
        if kind == "table" and name not in JOURNAL_TABLES and isinstance(sql, str):
            table = StateTable(str(name), sql, [], None)
            if root in damaged_trees:
                table.problem = "damaged pages (SQLite's quick_check)"
            tables[table.name] = table
    for kind, _name, owner, _root, sql in schema:
        if kind == "index" and owner in tables and isinstance(sql, str):
            tables[str(owner)].indexes.append(sql)  # rebuilt from the rows: damage is no loss
    for table in tables.values():
        _read_rows(conn, table)
    sets: list[StateSet] = []
    for label, names in KNOWN_SETS:
        found = [tables.pop(name) for name in names if name in tables]
        if found:
            sets.append(StateSet(label, found))
    sets.extend(StateSet(f"table {name}", [table]) for name, table in sorted(tables.items()))
    return sets


def _read_rows(conn: sqlite3.Connection, table: StateTable) -> None:
    quoted = '"' + table.name.replace('"', '""') + '"'
    try:
        table.rows = list(conn.execute(f"SELECT * FROM {quoted}").fetchall())
    except sqlite3.DatabaseError as exc:
        table.rows = None
        table.problem = f"cannot be read ({exc})"


def copy_sets(sets: list[StateSet], dest: sqlite3.Connection) -> None:
    """Make the tables of ``sets`` (every one readable) in ``dest`` and fill
    them, in one transaction."""
    dest.execute("BEGIN")
    try:
        for state in sets:
            for table in state.tables:
                dest.execute(table.sql)
                rows = table.rows or []
                if rows:
                    quoted = '"' + table.name.replace('"', '""') + '"'
                    marks = ", ".join("?" * len(rows[0]))
                    dest.executemany(f"INSERT INTO {quoted} VALUES ({marks})", rows)
                for index in table.indexes:
                    dest.execute(index)
        dest.execute("COMMIT")
    except BaseException:
        if dest.in_transaction:
            dest.execute("ROLLBACK")
        raise

"""The reactor's tables in a journal's file (saltbus.journal.state_tables), on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from saltbus.journal.state_tables import KNOWN_SETS, copy_sets, read_sets
from tests.journal_support import (
    add_reactor_state,
    build_journal,
    overwrite_pages,
    table_leaves,
    table_rows,
)


def sets_of(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        sets = read_sets(conn)
    finally:
        conn.close()
    assert sets is not None
    return {state.label: [table.name for table in state.tables] for state in sets}


def test_the_known_sets_are_every_table_the_reactor_makes(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    build_journal(path, 10)
    assert sets_of(path) == {}, "a journal alone has no state tables"
    add_reactor_state(path, groups=3)
    # The reactor's stores made the tables: each is in a known set, none is left over.
    assert sets_of(path) == {label: list(names) for label, names in KNOWN_SETS}


def test_a_table_made_by_someone_else_is_a_set_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    build_journal(path, 10)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (n INTEGER)")
    conn.commit()
    conn.close()
    assert sets_of(path) == {"table notes": ["notes"]}


def test_a_damaged_table_spoils_its_set_only_and_the_rest_copies(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    build_journal(path, 100)
    rows = add_reactor_state(path)
    leaves = table_leaves(path, "reactor_rule_groups")
    assert len(leaves) > 4
    overwrite_pages(path, leaves[1:3])
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sets = read_sets(conn)  # the damaged rows fail to read
    finally:
        conn.close()
    assert sets is not None
    problems = {state.label: state.problem for state in sets}
    assert problems["the rules' windows and counters"] is not None
    assert "reactor_rule_groups" in str(problems["the rules' windows and counters"])
    assert problems["the rules' unfinished firings"] is None
    assert problems["the reactor's open jobs"] is None
    fresh = tmp_path / "fresh.sqlite3"
    dest = sqlite3.connect(fresh, isolation_level=None)
    try:
        copy_sets([state for state in sets if state.problem is None], dest)
    finally:
        dest.close()
    for table in ("reactor_rule_firings", "reactor_open_jobs", "reactor_open_jobs_seq"):
        assert table_rows(fresh, table) == rows[table]
    # Kept whole or not at all: the seq the state reflects goes with the state.
    assert table_rows(fresh, "reactor_rule_groups") is None
    assert table_rows(fresh, "reactor_rule_meta") is None


def test_quick_check_naming_a_table_spoils_its_set(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    build_journal(path, 10)
    add_reactor_state(path, groups=3)
    conn = sqlite3.connect(path)
    try:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'reactor_open_jobs'"
        ).fetchone()
        # What quick_check says of a B-tree it found damaged, rows readable or not.
        sets = read_sets(conn, [f"Tree {root} page {root} cell 0: invalid page number 99"])
    finally:
        conn.close()
    assert sets is not None
    problems = {state.label: state.problem for state in sets}
    assert problems == {
        "the rules' windows and counters": None,
        "the rules' unfinished firings": None,
        "the reactor's open jobs": "reactor_open_jobs: damaged pages (SQLite's quick_check)",
    }

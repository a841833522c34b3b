"""`saltbus journal` and a damaged journal under `serve` and `history`, as processes.

Each kind of damage (random bytes over pages, a truncated file, an empty
file, a file that is not SQLite) is put on a real journal file; then every
command answers in one line (no traceback), and `journal recover` keeps every
event that was not on a damaged page.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saltbus.cli.common import journal_file
from saltbus.cli.journal import recover_command
from saltbus.config import Config
from saltbus.journal import Journal
from saltbus.journal.checkpoint import CHECKPOINT_INTERVAL
from saltbus.journal.state_tables import KNOWN_SETS
from saltbus.journal.tail import encode, tail_path
from tests.journal_support import (
    CURSOR,
    PAGE,
    TABLE_LEAF,
    add_reactor_state,
    build_journal,
    event,
    events_on_pages,
    events_root,
    middle_leaves,
    overwrite_pages,
    page_types,
    seqs,
    table_leaves,
    truncate,
)
from tests.serve_support import SALTBUS, ServeProcess, bus_flags, clean_env

EVENTS = 3000
DAY = 86_400.0


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(SALTBUS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def bus(sock_dir: Path) -> Config:
    return Config.load(
        env={}, overrides={"sock_dir": sock_dir / "bus", "data_dir": sock_dir / "data"}
    )


class Damaged:
    """A journal damaged one way, and the events a recovery must keep."""

    def __init__(self, config: Config, kind: str) -> None:
        self.path = journal_file(config)
        self.records = build_journal(self.path, EVENTS, config.sock_dir)
        with Journal.open(self.path, readonly=True) as journal:
            self.epoch = journal.epoch()
        size = self.path.stat().st_size
        if kind == "pages":
            pages = middle_leaves(self.path)
            self.damaged = events_on_pages(self.path, pages, self.records)
            overwrite_pages(self.path, pages)
            self.must_keep = {r.seq for r in self.records} - self.damaged
        elif kind == "truncated":
            cut = size // 2 + 123
            # What lies on whole pages before the cut is intact.
            whole = list(range(1, cut // PAGE + 1))
            self.must_keep = events_on_pages(self.path, whole, self.records)
            truncate(self.path, cut)
        elif kind == "empty":
            truncate(self.path, 0)
            self.must_keep = set()
        else:
            self.path.write_bytes(b"this is not a journal\n" * 100)
            self.must_keep = set()


KINDS = ["pages", "truncated", "empty", "foreign"]
WORDS = {
    "pages": "damaged",
    "truncated": "truncated",
    "empty": "empty file",
    "foreign": "not an SQLite file",
}


@pytest.mark.parametrize("kind", KINDS)
def test_serve_refuses_a_damaged_journal_in_one_line(bus: Config, kind: str) -> None:
    damaged = Damaged(bus, kind)
    result = run("serve", *bus_flags(bus))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert str(damaged.path) in line and WORDS[kind] in line, line
    assert f"saltbus journal recover --sock-dir {bus.sock_dir}" in line, line
    assert not bus.pub_address.exists()  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
def test_history_prints_what_is_readable_and_one_line_on_the_damage(bus: Config, kind: str) -> None:
    damaged = Damaged(bus, kind)
    result = run("history", *bus_flags(bus), "--json")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert str(damaged.path) in line and "saltbus journal recover" in line, line
    printed = {json.loads(text)["seq"] for text in result.stdout.splitlines()}
    if kind == "pages":
        # Every event outside the damaged pages, and where the rest were.
        assert printed == damaged.must_keep
        assert f"seqs {min(damaged.damaged)}-{max(damaged.damaged)} " in line, line
    else:
        assert printed >= damaged.must_keep
        assert WORDS[kind] in line or "damaged" in line, line


@pytest.mark.parametrize("kind", KINDS)
def test_check_lists_each_problem_and_exits_1(bus: Config, kind: str) -> None:
    damaged = Damaged(bus, kind)
    result = run("journal", "check", *bus_flags(bus))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(line.startswith(f"journal {damaged.path} ") for line in lines[:-1]), lines
    assert WORDS[kind] in result.stdout
    assert lines[-1].startswith(f"`saltbus journal recover --sock-dir {bus.sock_dir}")
    report = json.loads(run("journal", "check", *bus_flags(bus), "--json").stdout)
    assert report["healthy"] is False and report["problems"]


@pytest.mark.parametrize("kind", KINDS)
def test_recover_keeps_every_event_outside_the_damaged_pages(bus: Config, kind: str) -> None:
    damaged = Damaged(bus, kind)
    result = run("journal", "recover", *bus_flags(bus))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert f"recovered journal {damaged.path}" in result.stdout
    kept = seqs(damaged.path)
    assert set(kept) >= damaged.must_keep
    by_seq = {r.seq: r for r in damaged.records}
    with Journal.open(damaged.path, readonly=True) as journal:
        assert all(by_seq[r.seq] == r for r in journal.iter_read())  # nothing made up
        if kind == "pages":
            assert set(kept) == damaged.must_keep
            assert journal.epoch() == damaged.epoch  # the numbering goes on
            assert journal.last_seq() == EVENTS
            assert journal.get_cursor(CURSOR) == EVENTS // 3
            assert f"lost {len(damaged.damaged)} " in result.stdout
        if kind in ("empty", "foreign"):
            assert journal.epoch() not in (None, damaged.epoch)
    aside = list(damaged.path.parent.glob(f"{damaged.path.name}.damaged-*Z"))
    assert len(aside) == 1 and str(aside[0]) in result.stdout
    healthy = run("journal", "check", *bus_flags(bus))
    assert healthy.returncode == 0 and "is healthy" in healthy.stdout


def test_recovered_journal_is_served_and_continues_its_seqs(
    bus: Config, serves: Callable[..., ServeProcess]
) -> None:
    Damaged(bus, "pages")
    assert run("journal", "recover", *bus_flags(bus)).returncode == 0
    daemon = serves(bus, *bus_flags(bus))
    assert run("fire", "--sock-dir", str(bus.sock_dir), "--ack", "after/recovery").returncode == 0
    daemon.stop()
    assert seqs(journal_file(bus))[-1] == EVENTS + 1


def test_recover_is_refused_while_the_bus_is_served(
    bus: Config, serves: Callable[..., ServeProcess]
) -> None:
    serves(bus, *bus_flags(bus))
    result = run("journal", "recover", "--force", *bus_flags(bus))
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert "serving" in line and str(bus.sock_dir) in line


def test_recover_leaves_a_healthy_journal_alone(bus: Config) -> None:
    path = journal_file(bus)
    build_journal(path, 10, bus.sock_dir)
    result = run("journal", "recover", *bus_flags(bus))
    assert result.returncode == 0 and "nothing to recover" in result.stdout
    assert not list(path.parent.glob("*.damaged-*"))


def test_check_reports_the_tail_and_the_reactor_state(bus: Config) -> None:
    path = journal_file(bus)
    build_journal(path, 500, bus.sock_dir)
    add_reactor_state(path, groups=5)
    # A killed publisher's tail: 51 events SQLite has, 20 it lacks, a torn frame.
    torn = encode([event(521)])[:-5]
    tail_path(path).write_bytes(encode([event(seq) for seq in range(450, 521)]) + torn)
    result = run("journal", "check", *bus_flags(bus))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"journal {path} is healthy (520 events, last seq 520)"
    assert lines[1].startswith(
        f"tail {tail_path(path)}: 71 events (seqs 450 to 520), 20 of them not in SQLite yet"
    ), lines
    assert f"a last frame cut short by a kill ({len(torn)} bytes)" in lines[1]
    assert lines[2].startswith("reactor state tables: the rules' windows and counters")
    assert "reactor_rule_groups, reactor_rule_meta: 6 rows" in lines[2]
    report = json.loads(run("journal", "check", *bus_flags(bus), "--json").stdout)
    assert report["healthy"] is True and report["readable_events"] == 520
    assert report["tail"]["unindexed"] == 20 and report["tail"]["torn_bytes"] == len(torn)
    assert [s["set"] for s in report["state_tables"]] == [label for label, _ in KNOWN_SETS]
    # A torn frame is what a kill leaves, not damage: nothing to recover.
    assert "nothing to recover" in run("journal", "recover", *bus_flags(bus)).stdout


def test_a_damaged_tail_is_checked_recovered_and_served_after(
    bus: Config, serves: Callable[..., ServeProcess]
) -> None:
    path = journal_file(bus)
    build_journal(path, 500, bus.sock_dir)
    add_reactor_state(path, groups=2000)
    overwrite_pages(path, table_leaves(path, "reactor_rule_groups")[1:2])
    good = encode([event(seq) for seq in range(490, 531)])
    tail_path(path).write_bytes(good + b"\xee" * 64 + encode([event(540)]))
    served = run("serve", *bus_flags(bus))
    assert served.returncode != 0 and "saltbus journal recover" in one_line(served.stderr)
    check = run("journal", "check", *bus_flags(bus))
    assert check.returncode == 1
    assert f"has a tail ({tail_path(path)}) damaged at byte {len(good)} (after seq 530)" in (
        check.stdout
    )
    assert "has the rules' windows and counters that cannot be kept" in check.stdout
    result = run("journal", "recover", *bus_flags(bus))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept 530 events (30 from its tail), lost an unknown number" in result.stdout
    assert (
        "reactor state: kept the rules' unfinished firings (reactor_rule_firings: 1 rows); "
        "the reactor's open jobs (reactor_open_jobs, reactor_open_jobs_seq: 2 rows); "
        "could not keep the rules' windows and counters (reactor_rule_groups: cannot be read"
    ) in result.stdout
    assert "new epoch" in result.stdout
    assert seqs(path) == list(range(1, 531))
    assert run("journal", "check", *bus_flags(bus)).returncode == 0
    daemon = serves(bus, *bus_flags(bus))
    assert run("fire", "--sock-dir", str(bus.sock_dir), "--ack", "after/recovery").returncode == 0
    daemon.stop()
    assert seqs(path)[-1] == 531


def test_check_of_a_missing_journal_is_one_line(bus: Config) -> None:
    result = run("journal", "check", *bus_flags(bus))
    assert result.returncode == 2
    assert "no journal at" in one_line(result.stderr)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_list_shows_every_journal_with_its_bus(sock_dir: Path) -> None:
    data = sock_dir / "data"
    buses = [
        Config.load(env={}, overrides={"sock_dir": sock_dir / name, "data_dir": data})
        for name in ("one", "two")
    ]
    build_journal(journal_file(buses[0]), 5, buses[0].sock_dir)
    build_journal(journal_file(buses[1]), 7)  # as an older saltbus left it: no sock_dir
    result = run("journal", "list", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["path"]: row for row in _json_lines(result.stdout)}
    first, second = (rows[str(journal_file(bus))] for bus in buses)
    assert first["sock_dir"] == str(buses[0].sock_dir.resolve())
    assert (first["first_seq"], first["last_seq"], first["served"]) == (1, 5, False)
    assert second["sock_dir"] is None and second["last_seq"] == 7
    assert first["size"] > 0 and first["last_written"] <= time.time()
    table = run("journal", "list", "--data-dir", str(data)).stdout
    assert "unknown (master_event)" in table and str(buses[0].sock_dir.resolve()) in table


def test_prune_removes_old_journals_of_buses_not_served(
    sock_dir: Path, serves: Callable[..., ServeProcess]
) -> None:
    data = sock_dir / "data"
    old, served, unknown, recent = (
        Config.load(env={}, overrides={"sock_dir": sock_dir / name, "data_dir": data})
        for name in ("old", "served", "unknown", "recent")
    )
    for bus in (old, served, recent):
        build_journal(journal_file(bus), 3, bus.sock_dir)
    build_journal(journal_file(unknown), 3)
    serves(served, *bus_flags(served))
    # The daemon's own start-up writes (and its checkpointer's, within a
    # second) would make the served journal recent again: let them land first.
    time.sleep(CHECKPOINT_INTERVAL + 1.0)
    long_ago = time.time() - 40 * DAY
    for bus in (old, served, unknown):
        for each in journal_file(bus).parent.glob(journal_file(bus).name + "*"):
            os.utime(each, (long_ago, long_ago))

    dry = run("journal", "prune", "--data-dir", str(data), "--older-than", "30d")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {journal_file(old)}" in dry.stdout
    assert all(journal_file(bus).exists() for bus in (old, served, unknown, recent))

    done = run("journal", "prune", "--data-dir", str(data), "--older-than", "30d", "--yes")
    assert done.returncode == 0, done.stderr
    assert not journal_file(old).exists()
    assert journal_file(served).exists() and "being served" in done.stdout
    assert journal_file(unknown).exists() and "--include-unknown" in done.stdout
    assert journal_file(recent).exists()

    run("journal", "prune", "--data-dir", str(data), "--older-than", "30d", "--yes",
        "--include-unknown")  # fmt: skip
    assert not journal_file(unknown).exists()


def test_prune_needs_a_valid_duration(sock_dir: Path) -> None:
    result = run("journal", "prune", "--data-dir", str(sock_dir), "--older-than", "soon")
    assert result.returncode == 2 and "not a duration" in result.stderr


def test_journal_help_names_every_subcommand() -> None:
    result = run("journal", "--help")
    assert result.returncode == 0
    for word in ("check", "recover", "list", "prune"):
        assert word in result.stdout
    for sub in ("check", "recover", "list", "prune"):
        text = run("journal", sub, "--help").stdout
        assert "--sock-dir" in text and "--data-dir" in text and "--config" in text


def test_a_journal_the_daemon_wrote_and_a_disk_damaged(
    bus: Config, serves: Callable[..., ServeProcess]
) -> None:
    daemon = serves(bus, *bus_flags(bus))
    for n in range(3):
        fired = run("fire", "--sock-dir", str(bus.sock_dir), "--ack", f"app/{n}")
        assert fired.returncode == 0, fired.stderr
    listed = _json_lines(run("journal", "list", *bus_flags(bus), "--json").stdout)
    assert [(row["sock_dir"], row["served"]) for row in listed] == [
        (str(bus.sock_dir.resolve()), True)
    ]
    daemon.stop()
    path = journal_file(bus)
    leaf = events_root(path)  # three events: the root is the one leaf
    assert page_types(path)[leaf] == TABLE_LEAF
    overwrite_pages(path, [leaf])

    refused = run("serve", *bus_flags(bus))
    assert refused.returncode != 0
    assert "is damaged" in one_line(refused.stderr)
    history = run("history", *bus_flags(bus))
    assert history.returncode == 1 and history.stdout == ""
    assert "seqs 1-3 " in one_line(history.stderr)


def test_the_fix_command_names_the_bus_as_it_was_named(tmp_path: Path) -> None:
    args = argparse.Namespace(data_dir=tmp_path / "my data", config=tmp_path / "minion.yml")
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path / "run", "node": "minion", "id": "web 1"}
    )
    command = recover_command(args, config)
    assert shlex.split(command) == [
        "saltbus", "journal", "recover", "--sock-dir", str(tmp_path / "run"),
        "--data-dir", str(tmp_path / "my data"), "--config", str(tmp_path / "minion.yml"),
        "--node", "minion", "--id", "web 1",
    ]  # fmt: skip

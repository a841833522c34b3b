"""saltbus.reactor.progress: the low-water mark saved as the reactor's position,
and the pid file that `saltbus react --reload` signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from saltbus.client.positions import PositionStore
from saltbus.config import Config
from saltbus.errors import BusError
from saltbus.journal import Journal, JournalRecord
from saltbus.reactor.progress import (
    Backlog,
    PidFile,
    Progress,
    backlog,
    bus_journal,
    pid_path,
    position_store,
    signal_reactor,
)
from saltbus.wire import pack_body


def test_mark_waits_for_the_oldest_event_in_flight(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "j.sqlite3", "reactor.t")
    progress = Progress(store, interval=0.0)
    progress.epoch = 42
    progress.seen(1, 0)
    assert progress.mark == 1 and store.load() == (42, 1)
    progress.seen(2, 2)
    progress.seen(3, 1)
    progress.seen(4, 0)
    assert progress.mark == 1
    progress.done(3)  # a later event finished first: the mark must not pass 2
    assert progress.mark == 1 and store.load() == (42, 1)
    progress.done(2)
    assert progress.mark == 1 and progress.in_flight == 1
    progress.done(2)
    assert progress.mark == 4 and store.load() == (42, 4)


def test_saves_are_coalesced_and_the_last_one_is_kept(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "j.sqlite3", "reactor.t")
    progress = Progress(store, interval=3600.0)
    for seq in range(1, 101):
        progress.seen(seq, 0)
    assert store.load() == (None, 1)
    progress.save()
    assert store.load() == (None, 100)


def test_events_without_sequence_numbers_are_not_tracked() -> None:
    progress = Progress(None)
    progress.seen(None, 3)
    progress.done(None)
    assert progress.mark is None and progress.in_flight == 0


def test_paths_follow_the_bus_journal(tmp_path: Path) -> None:
    config = Config.load(
        env={}, overrides={"sock_dir": tmp_path / "bus", "data_dir": tmp_path, "reactor_name": "r1"}
    )
    journal = bus_journal(config)
    assert journal.parent == tmp_path and journal.suffix == ".sqlite3"
    assert position_store(config).path == journal.with_suffix(".positions") / "reactor.r1"
    assert pid_path(config) == journal.with_suffix(".reactors") / "r1.pid"


def test_pid_file_is_exclusive_and_signals_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "reactors" / "r.pid"
    with pytest.raises(BusError, match="no reactor runs"):
        signal_reactor(path)
    holder = PidFile(path)
    holder.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(BusError, match=f"already runs on this bus \\(pid {os.getpid()}\\)"):
            PidFile(path).acquire()
        got = threading.Event()

        def handler(signum: int, frame: FrameType | None) -> None:
            got.set()

        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            assert signal_reactor(path, signal.SIGUSR1) == os.getpid()
            assert got.wait(5)
        finally:
            signal.signal(signal.SIGUSR1, previous)
    finally:
        holder.release()
    assert not path.exists()


def test_a_stale_pid_file_is_not_signalled(tmp_path: Path) -> None:
    path = tmp_path / "r.pid"
    path.write_text("999999\n")
    with pytest.raises(BusError, match="stale"):
        signal_reactor(path)


def journal_with(path: Path, times: list[float]) -> int:
    """A journal holding one event per time, seqs from 1; its epoch."""
    with Journal.open(path) as journal:
        epoch = journal.claim_epoch()
        journal.append(
            [
                JournalRecord(seq, at, "t", pack_body("t", {"n": seq}))
                for seq, at in enumerate(times, 1)
            ]
        )
    return epoch


def test_backlog_is_what_the_journal_holds_after_the_position(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    now = time.time()
    epoch = journal_with(path, [now - 600 + n for n in range(10)])
    found = backlog(path, 3, epoch)
    assert found == Backlog(3, 4, 10, now - 600 + 3)
    assert found.events == 7
    stamp = time.strftime("%H:%M:%S", time.localtime(now - 597))
    assert found.describe(now) == (
        f"catching up 7 events from seq 4 to 10 (oldest {stamp}, 10 min ago)"
    )
    # A position saved before any epoch was known (a Salt-era position) still counts.
    assert backlog(path, 3, None) == found
    nothing = backlog(path, 10, epoch)
    assert nothing is not None and nothing.events == 0
    assert nothing.describe(now) == "nothing to catch up: every event up to seq 10 was handled"
    # A journal made anew numbers its events in another epoch: the saved position means nothing.
    assert backlog(path, 3, epoch + 1) is None


@pytest.mark.parametrize(
    ("ago", "fmt", "said"),
    [
        (5, "%H:%M:%S", "5 s ago"),
        (59 * 60, "%H:%M:%S", "59 min ago"),
        (3 * 3600, "%H:%M:%S", "3.0 h ago"),
        (3 * 86400, "%Y-%m-%d %H:%M:%S", "3.0 days ago"),
    ],
)
def test_backlog_says_how_old_its_oldest_event_is(ago: float, fmt: str, said: str) -> None:
    now = 2_000_000_000.0
    text = Backlog(0, 1, 5, now - ago).describe(now)
    assert text.endswith(f"(oldest {time.strftime(fmt, time.localtime(now - ago))}, {said})")
